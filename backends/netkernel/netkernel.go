// Package netkernel is the seam between weft and the kernel's network
// stack: the Kernel interface (links, addresses, routes, neighbours;
// netlink's calls, counted) that every kernel backend programs through,
// with netkerneltest's in-memory fake that prints its state as ip and
// bridge do; and what backends build on it: weft's routes to peers
// (SyncPeerRoutes), tunnel links, footprints for cleanup, conversions from
// netip to netlink types, and dumps that retry when the kernel interrupts
// them.
package netkernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks every route weft installs (as "proto 87" in
// `ip route`), so a restarted weftd can find and prune its stale routes
// without touching anyone else's.
const RouteProtocol netlink.RouteProtocol = 87

// IPNet converts a prefix to the *net.IPNet netlink wants.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix converts a netlink destination back; ok is false for nil or odd input.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), bits), true
}

// Addr converts a net.IP; the zero Addr for nil.
func Addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// dumpRetries bounds retries of an interrupted dump; the kernel interrupts
// a dump when the table changes under it, which settles quickly.
const dumpRetries = 10

// Retry runs a netlink dump until it is not interrupted, so callers never
// act on partial data.
func Retry[T any](dump func() (T, error)) (T, error) {
	var out T
	var err error
	for range dumpRetries {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, fmt.Errorf("netlink dump interrupted %d times in a row: %w", dumpRetries, err)
}

// OwnedRoutes lists the IPv4 and IPv6 routes in the main table that carry
// RouteProtocol.
func OwnedRoutes(k Kernel) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	v4, err := k.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	v6, err := k.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	return append(v4, v6...), err
}
