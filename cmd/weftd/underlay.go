package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"net/url"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
)

// peersNetworkConflict says why this host must not route PeersNetwork
// into WireGuard, or "": one of its own addresses, or an etcd endpoint it
// talks to, lies inside it. Routing the range would send that traffic into
// the overlay and cut the host off from etcd or its peers; the config is
// valid for the other hosts, so this host leaves the range alone and says
// so instead.
func peersNetworkConflict(peers netip.Prefix, own []netip.Addr, etcdEndpoints []string) string {
	if !peers.IsValid() {
		return ""
	}
	for _, a := range own {
		if peers.Contains(a.Unmap()) {
			return fmt.Sprintf("this host's address %s is inside PeersNetwork %s", a, peers)
		}
	}
	for _, e := range etcdEndpoints {
		host := e
		if u, err := url.Parse(e); err == nil && u.Host != "" {
			host = u.Hostname()
		}
		if a, err := netip.ParseAddr(host); err == nil && peers.Contains(a.Unmap()) {
			return fmt.Sprintf("etcd endpoint %s is inside PeersNetwork %s", e, peers)
		}
	}
	return ""
}

// hostAddrs are the addresses of this host's interfaces (none when they
// cannot be read: the check is a guard, not a requirement).
func hostAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

// overlayOnUnderlay names the external interface when overlay traffic
// crosses it unencapsulated: host-gw's routes, the extension's and
// alloc's (whatever routing the operator set up) and DirectRouting's
// peers. The firewall accepts the Network's traffic there besides weft's
// own devices.
func overlayOnUnderlay(cfg *lease.Config, ext underlay.ExternalInterface) []string {
	var opts struct{ DirectRouting bool }
	json.Unmarshal(cfg.Backend.Raw, &opts) // validated already; a bad value means false
	switch {
	case ext.Name == "":
		return nil
	case backends.KindOf(cfg).OnUnderlay || opts.DirectRouting:
		return []string{ext.Name}
	}
	return nil
}
