package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
)

// What weftd keeps on the host itself, beside the backend's data path:
// its addresses, IP forwarding and -ip-blackhole-route's routes.

// hostAddresses settles this host's addresses on the network cfg
// describes: its PublicIP (0.0.0.0 on an IPv6-only network, as flannel
// writes it; an error when the config carries IPv4 and the interface has
// none), its PublicIPv6 on a dual-stack network, and whether it may route
// PeersNetwork (not when its own address or an etcd endpoint lies inside:
// cfg loses PeersNetwork then, and the log says why).
func hostAddresses(o *options, cfg *lease.Config, ext underlay.ExternalInterface, publicIP netip.Addr, log *slog.Logger) (netip.Addr, netip.Addr, error) {
	if why := peersNetworkConflict(cfg.PeersNetwork, hostAddrs(), o.etcd.Endpoints); why != "" {
		log.Error("not routing PeersNetwork on this host: outside peers cannot reach it; choose a PeersNetwork no host or etcd address uses", "reason", why)
		cfg.PeersNetwork = netip.Prefix{}
	}
	switch {
	case !cfg.EnableIPv4:
		publicIP = netip.IPv4Unspecified() // an IPv6-only lease's, as flannel writes it
	case !publicIP.IsValid():
		return publicIP, netip.Addr{}, fmt.Errorf("interface %s has no global IPv4 address, and the network config carries IPv4; give it one, pick another interface with -iface, or set -public-ip", ext.Name)
	}
	if !cfg.EnableIPv6 {
		return publicIP, netip.Addr{}, nil
	}
	publicIP6, err := publicIPv6(o, ext)
	if err == nil {
		log.Info("dual stack: IPv6 underlay address chosen", "public_ipv6", publicIP6, "iface", ext.Name)
	}
	return publicIP, publicIP6, err
}

// turnOnForwarding turns on IP forwarding for each family the network
// carries; without it the kernel drops what the overlay forwards.
func turnOnForwarding(cfg *lease.Config, log *slog.Logger) {
	if err := enableForwarding("/proc/sys/net/ipv4/ip_forward"); err != nil {
		log.Warn("cannot turn on net.ipv4.ip_forward; forwarded traffic will be dropped", "err", err)
	}
	if cfg.EnableIPv6 {
		if err := enableForwarding("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			log.Warn("cannot turn on net.ipv6.conf.all.forwarding; forwarded IPv6 traffic will be dropped", "err", err)
		}
	}
}

// enableForwarding turns on the forwarding sysctl at path (IPv4's or
// IPv6's), writing only when it is off.
func enableForwarding(path string) error {
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	return os.WriteFile(path, []byte("1\n"), 0o644)
}

// keepBlackholes keeps -ip-blackhole-route's route for each half of the
// lease, as flannel adds one per family.
func keepBlackholes(ctx context.Context, g *errgroup.Group, o *options, cfg *lease.Config, kernel netutil.Kernel, holder *lease.Holder, log *slog.Logger) {
	every := time.Duration(o.iptablesSync) * time.Second
	if cfg.EnableIPv4 {
		g.Go(func() error {
			return keepBlackhole(ctx, kernel, func() netip.Prefix { return holder.Current().Subnet }, every, log)
		})
	}
	if cfg.EnableIPv6 {
		g.Go(func() error {
			return keepBlackhole(ctx, kernel, func() netip.Prefix { return holder.Current().IPv6Subnet }, every, log)
		})
	}
}

// keepBlackhole keeps the blackhole route for this host's subnet of one
// family (-ip-blackhole-route), checked every interval as flannel does, and
// moves it when the lease moves to another subnet.
func keepBlackhole(ctx context.Context, kernel netutil.Kernel, current func() netip.Prefix, interval time.Duration, log *slog.Logger) error {
	var previous netip.Prefix
	lastErr := ""
	for {
		// No subnet of this family yet (a lease gaining its IPv6 half):
		// nothing to keep until the next check.
		if subnet := current(); subnet.IsValid() {
			if err := netutil.EnsureBlackhole(kernel, subnet, previous); err != nil {
				if err.Error() != lastErr {
					log.Error("blackhole route; retrying", "subnet", subnet, "err", err)
				}
				lastErr = err.Error()
			} else {
				previous, lastErr = subnet, ""
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// notOnUnderlay refuses a Network that overlaps the external interface's
// own networks: routing the Network through the overlay would cut this
// host off from its peers.
func notOnUnderlay(cfg *lease.Config, ext underlay.ExternalInterface) error {
	for _, p := range ext.Prefixes {
		if p.Overlaps(cfg.Network) {
			return fmt.Errorf(`%w: key "Network": %s overlaps %s on %s, the underlay between hosts; choose a Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.Network, p, ext.Name)
		}
		if cfg.EnableIPv6 && p.Overlaps(cfg.IPv6Network) {
			return fmt.Errorf(`%w: key "IPv6Network": %s overlaps %s on %s, the underlay between hosts; choose an IPv6Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.IPv6Network, p, ext.Name)
		}
	}
	return nil
}
