package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/lease"
)

// ownedBy returns the backend whose footprint includes the device name,
// or "" for a device weft did not make.
func ownedBy(footprints map[string]netutil.Footprint, name string) string {
	for backend, f := range footprints {
		if f.OwnsLink(name) {
			return backend
		}
	}
	return ""
}

// runCleanup removes everything weft made on this host: devices, routes,
// iptables chains, the subnet file, the UAPI socket; with -release also the
// lease in etcd. Run it with weftd stopped.
func runCleanup(ctx context.Context, args []string, opts lease.EtcdOptions, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	subnetFile := fs.String("subnet-file", lease.DefaultSubnetFile, "weftd's subnet file")
	release := fs.Bool("release", false, "also delete this host's lease from etcd")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var errs []error
	if *release {
		env, err := lease.ReadSubnetFile(*subnetFile)
		if err != nil {
			return fmt.Errorf("-release needs the subnet file to know the lease: %w; nothing removed", err)
		}
		err = withStore(opts, func(s *lease.EtcdStore) error { return s.Delete(ctx, lease.SubnetKey(env.Subnet)) })
		if err != nil {
			return fmt.Errorf("releasing lease %s: %w; nothing removed", lease.SubnetKey(env.Subnet), err)
		}
		fmt.Fprintf(stdout, "released lease %s\n", lease.SubnetKey(env.Subnet))
	}
	// Every backend's footprint, whichever ran: a host may have switched
	// Backend.Type, and cleanup must leave nothing of any.
	footprints := backends.Footprints()
	kernel := netutil.NewNetlink(nil, nil)
	links, err := netutil.Retry(netlink.LinkList)
	errs = append(errs, err)
	for _, l := range links {
		name := l.Attrs().Name
		if ownedBy(footprints, name) == "" {
			continue
		}
		if err := kernel.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
		} else {
			fmt.Fprintf(stdout, "removed device %s\n", name)
		}
	}
	routes, err := netutil.OwnedRoutes(kernel)
	errs = append(errs, err)
	for _, r := range routes {
		if err := kernel.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("removing route %s: %w", r.Dst, err))
		} else {
			fmt.Fprintf(stdout, "removed route %s\n", r.Dst)
		}
	}
	if k, err := firewall.NewKeeper(firewall.Settings{Masq: true, Forward: true}, discardLogger()); err == nil {
		if err := k.Cleanup(); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintln(stdout, "removed iptables chains", firewall.MasqChain, "and", firewall.ForwardChain)
		}
	}
	files := []string{*subnetFile}
	for _, f := range footprints {
		files = append(files, f.Files...)
	}
	for _, f := range files {
		if err := os.Remove(f); err == nil {
			fmt.Fprintf(stdout, "removed %s\n", f)
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
