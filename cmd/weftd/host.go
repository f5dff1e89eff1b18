package main

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
)

// The host's own addresses on the network, and what the Network may not
// overlap (forwarding and blackhole routes are cmd/internal/host's).

// hostAddresses settles this host's addresses on the network cfg
// describes: its PublicIP (0.0.0.0 on an IPv6-only network, as flannel
// writes it; an error when the config carries IPv4 and the interface has
// none), its PublicIPv6 on a dual-stack network, and whether it may route
// PeersNetwork (not when its own address or an etcd endpoint lies inside:
// cfg loses PeersNetwork then, and the log says why).
func hostAddresses(o *options, cfg *lease.Config, ext underlay.ExternalInterface, publicIP netip.Addr,
	log *slog.Logger) (netip.Addr, netip.Addr, error) {
	if why := peersNetworkConflict(cfg.PeersNetwork, hostAddrs(), o.etcd.Endpoints); why != "" {
		log.Error("not routing PeersNetwork on this host: outside peers cannot reach it; choose a PeersNetwork no host "+
			"or etcd address uses", "reason", why)
		cfg.PeersNetwork = netip.Prefix{}
	}
	switch {
	case !cfg.EnableIPv4:
		publicIP = netip.IPv4Unspecified() // an IPv6-only lease's, as flannel writes it
	case !publicIP.IsValid():
		return publicIP, netip.Addr{}, fmt.Errorf("interface %s has no global IPv4 address, and the network config "+
			"carries IPv4; give it one, pick another interface with -iface, or set -public-ip", ext.Name)
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

// notOnUnderlay refuses a Network that overlaps the external interface's
// own networks: routing the Network through the overlay would cut this
// host off from its peers.
func notOnUnderlay(cfg *lease.Config, ext underlay.ExternalInterface) error {
	for _, p := range ext.Prefixes {
		if p.Overlaps(cfg.Network) {
			return fmt.Errorf(`%w: key "Network": %s overlaps %s on %s, the underlay between hosts; `+
				`choose a Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.Network, p, ext.Name)
		}
		if cfg.EnableIPv6 && p.Overlaps(cfg.IPv6Network) {
			return fmt.Errorf(`%w: key "IPv6Network": %s overlaps %s on %s, the underlay between hosts; choose an `+
				`IPv6Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.IPv6Network, p, ext.Name)
		}
	}
	return nil
}
