package leasetest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/weftnet/weft/lease"
)

// FlannelCapture is what flanneld itself wrote under its etcd prefix for one
// backend (shared/flannel/<backend>.etcd.txt): the network config and every
// lease, byte for byte.
type FlannelCapture struct {
	// Backend is the Backend.Type the capture was made with.
	Backend string
	// Config is the <prefix>/config value.
	Config []byte
	// Leases are the <prefix>/subnets/ records, keys relative to subnets/.
	Leases []lease.Record
}

// FlannelDir finds shared/flannel: ../shared/flannel beside the module
// root, which is found by walking up from the working directory to go.mod.
func FlannelDir() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			shared := filepath.Join(dir, "..", "shared", "flannel")
			if _, err := os.Stat(shared); err != nil {
				return "", fmt.Errorf("flannel's captured output: %w (shared/ must sit beside the repository)", err)
			}
			return shared, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory, so no shared/flannel")
		}
		dir = parent
	}
}

// ReadFlannelCapture reads shared/flannel/<backend>.etcd.txt, which is
// `etcdctl get --prefix` output: a key line, then its value line.
func ReadFlannelCapture(backend string) (FlannelCapture, error) {
	dir, err := FlannelDir()
	if err != nil {
		return FlannelCapture{}, err
	}
	path := filepath.Join(dir, backend+".etcd.txt")
	data, err := os.ReadFile(path)
	if err != nil {
		return FlannelCapture{}, err
	}
	c := FlannelCapture{Backend: backend}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key := sc.Text()
		if !sc.Scan() {
			return c, fmt.Errorf("%s: key %s has no value line", path, key)
		}
		value := []byte(sc.Text())
		switch {
		case strings.HasSuffix(key, "/config"):
			c.Config = value
		case strings.Contains(key, "/subnets/"):
			_, rel, _ := strings.Cut(key, "/subnets/")
			c.Leases = append(c.Leases, lease.Record{Key: rel, Value: value, Revision: int64(len(c.Leases) + 1)})
		default:
			return c, fmt.Errorf("%s: unexpected key %s", path, key)
		}
	}
	if c.Config == nil || len(c.Leases) == 0 {
		return c, fmt.Errorf("%s: no config or no leases", path)
	}
	return c, sc.Err()
}

// ReadFlannelSubnetEnv returns shared/flannel/subnet.env.<backend> as
// flanneld wrote it.
func ReadFlannelSubnetEnv(backend string) ([]byte, error) {
	dir, err := FlannelDir()
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(dir, "subnet.env."+backend))
}
