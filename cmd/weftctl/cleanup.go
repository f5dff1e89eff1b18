package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/nft"
	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/cmd/internal/host"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
)

// ownedBy returns the backend whose footprint includes the device name,
// or "" for a device weft did not make.
func ownedBy(footprints map[string]netkernel.Footprint, name string) string {
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
func runCleanup(ctx context.Context, args []string, opts etcdstore.Options, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	subnetFile := fs.String("subnet-file", lease.DefaultSubnetFile, "weftd's subnet file")
	release := fs.Bool("release", false, "also delete this host's lease from etcd")
	flannel := fs.Bool("flannel", false,
		"remove what flanneld left instead (its devices, iptables chains and routes), to move this host from flannel to "+
			"weft in place; the subnet file stays, so weftd keeps the subnet")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *flannel {
		return cleanupFlannel(*subnetFile, stdout)
	}
	var errs []error
	if *release {
		env, err := lease.ReadSubnetFile(*subnetFile)
		if err != nil {
			return fmt.Errorf("-release needs the subnet file to know the lease: %w; nothing removed", err)
		}
		err = withStore(opts, func(s *etcdstore.Store) error { return s.Delete(ctx, lease.SubnetKey(env.Subnet)) })
		if err != nil {
			return fmt.Errorf("releasing lease %s: %w; nothing removed", lease.SubnetKey(env.Subnet), err)
		}
		fmt.Fprintf(stdout, "released lease %s\n", lease.SubnetKey(env.Subnet))
	}
	// Every backend's footprint, whichever ran: a host may have switched
	// Backend.Type, and cleanup must leave nothing of any.
	footprints := backends.Footprints()
	kernel := netkernel.NewNetlink(nil)
	links, err := kernel.LinkList()
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
	routes, err := netkernel.OwnedRoutes(kernel)
	errs = append(errs, err)
	for _, r := range routes {
		if err := kernel.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("removing route %s: %w", r.Dst, err))
		} else {
			fmt.Fprintf(stdout, "removed route %s\n", r.Dst)
		}
	}
	// Both firewall modes: the config may have switched since.
	for _, clean := range []func() ([]string, error){firewall.CleanupIPTables, firewall.CleanupNFTables} {
		removed, err := clean()
		errs = append(errs, err)
		for _, r := range removed {
			fmt.Fprintln(stdout, "removed", r)
		}
	}
	if conn, err := nft.Open(); err == nil {
		removed, err := tunnelfilter.Remove(conn)
		errs = append(errs, err)
		if removed {
			fmt.Fprintf(stdout, "removed nftables table inet %s (the tunnel source filter)\n", tunnelfilter.TableName)
		}
	}
	files := []string{*subnetFile}
	for _, f := range footprints {
		files = append(files, f.Files...)
	}
	if env, err := lease.ReadSubnetFile(*subnetFile); err == nil {
		// -ip-blackhole-route's routes carry no weft protocol mark.
		for _, subnet := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
			if subnet.IsValid() {
				errs = append(errs, host.RemoveBlackhole(kernel, subnet))
			}
		}
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

// cleanupFlannel removes what flanneld leaves on a host when it stops, so
// weftd can take over in place: its devices (routes, neighbours and FDB
// entries on them go too), its routes elsewhere inside FLANNEL_NETWORK
// (host-gw routes, the blackhole route) and its iptables chains and jumps.
// weft's own state and the subnet file are left alone.
func cleanupFlannel(subnetFile string, stdout io.Writer) error {
	var errs []error
	kernel := netkernel.NewNetlink(nil)
	links, err := kernel.LinkList()
	errs = append(errs, err)
	for _, l := range links {
		if name := l.Attrs().Name; host.IsFlannelLink(name) {
			if err := kernel.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", name, err))
			} else {
				fmt.Fprintf(stdout, "removed flannel's device %s\n", name)
			}
		}
	}
	if env, err := lease.ReadSubnetFile(subnetFile); err == nil && env.Network.IsValid() {
		routes, err := kernel.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_TABLE)
		errs = append(errs, err)
		for _, r := range routes {
			dst, ok := netkernel.Prefix(r.Dst)
			// weft's own routes (proto 87) and the bridge's connected route
			// (proto kernel) stay; flanneld's host-gw and blackhole routes go.
			if !ok || !env.Network.Contains(dst.Addr()) || r.Protocol == netkernel.RouteProtocol ||
				r.Protocol == unix.RTPROT_KERNEL {
				continue
			}
			if err := kernel.RouteDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			} else {
				fmt.Fprintf(stdout, "removed flannel's route %s\n", dst)
			}
		}
	}
	removed, err := firewall.RemoveFlannel()
	errs = append(errs, err)
	for _, r := range removed {
		fmt.Fprintf(stdout, "removed flannel's %s\n", r)
	}
	return errors.Join(errs...)
}
