package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weftnet/weft/lease"
)

// The delegate's configuration of each container is kept in the data
// directory under the container's ID, as flannel's plugin keeps it: DEL
// and CHECK hand the delegate what ADD gave it, whatever the subnet file
// says by then (a subnet change, weftd gone), and a container flannel's
// plugin added is deleted from flannel's file.

// statePath is where the delegate configuration of container id is kept.
func statePath(dataDir, id string) (string, error) {
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return "", fmt.Errorf("container ID %q cannot name a file", id)
	}
	return filepath.Join(dataDir, id), nil
}

// saveState keeps conf for container id.
func saveState(dataDir, id string, conf []byte) error {
	path, err := statePath(dataDir, id)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	return lease.WriteFileAtomic(path, conf, 0o600)
}

// loadState reads what ADD kept for container id; ok is false when there
// is nothing (never added, or deleted already).
func loadState(dataDir, id string) (conf []byte, ok bool, err error) {
	path, err := statePath(dataDir, id)
	if err != nil {
		return nil, false, err
	}
	conf, err = os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	return conf, err == nil, err
}

// removeState forgets container id.
func removeState(dataDir, id string) error {
	path, err := statePath(dataDir, id)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// onOtherSubnets names the containers of network name (other than
// except) whose kept configuration gives addresses from a subnet of
// neither env's subnets: containers added before this host's subnet
// changed, which still hold addresses of the old one on the bridge.
func onOtherSubnets(dataDir, name, except string, env lease.SubnetEnv) ([]string, error) {
	entries, err := os.ReadDir(dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var stale []string
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") || e.Name() == except {
			continue
		}
		conf, err := os.ReadFile(filepath.Join(dataDir, e.Name()))
		if err != nil {
			continue
		}
		subnets, network, err := subnetsOf(conf)
		if err != nil || network != name {
			continue
		}
		for _, sn := range subnets {
			if sn != env.Subnet && sn != env.IPv6Subnet {
				stale = append(stale, fmt.Sprintf("%s (on %s)", e.Name(), sn))
				break
			}
		}
	}
	slices.Sort(stale)
	return stale, nil
}

// prefixIPNet is p as the CNI types carry it.
func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
