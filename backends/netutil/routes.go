package netutil

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RoutesByDst indexes routes by destination, keeping those keep accepts
// (all when keep is nil).
func RoutesByDst(routes []netlink.Route, keep func(netlink.Route) bool) map[netip.Prefix]netlink.Route {
	out := make(map[netip.Prefix]netlink.Route, len(routes))
	for _, r := range routes {
		if keep != nil && !keep(r) {
			continue
		}
		if dst, ok := Prefix(r.Dst); ok {
			out[dst] = r
		}
	}
	return out
}

// SyncRoutes makes current into want, the way every backend programs its
// routes: it sets each wanted route that current lacks or holds with
// another gateway or link, then deletes the routes of current that nothing
// wants. current is what the kernel holds (a dump) or, for a delta, what
// the last apply put there. It keeps going past failures and returns them
// all; log (nil for none) gets a line per route set or removed.
func SyncRoutes(k Kernel, current map[netip.Prefix]netlink.Route, want []netlink.Route, log *slog.Logger) []error {
	var errs []error
	keep := make(map[netip.Prefix]bool, len(want))
	for _, r := range want {
		dst, _ := Prefix(r.Dst)
		keep[dst] = true
		if cur, ok := current[dst]; ok && cur.LinkIndex == r.LinkIndex && Addr(cur.Gw) == Addr(r.Gw) {
			continue
		}
		if err := k.RouteReplace(&r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", dst, Addr(r.Gw), err))
			continue
		}
		if log != nil {
			log.Info("route set", "dst", dst, "via", Addr(r.Gw))
		}
	}
	for dst, r := range current {
		if keep[dst] {
			continue
		}
		if err := k.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			continue
		}
		if log != nil {
			log.Info("route removed", "dst", dst)
		}
	}
	return errs
}

// PeerRoute is weft's route to a peer's subnet dst through a tunnel
// device dev: via the peer's address on the far side, onlink; or, direct
// (DirectRouting, host-gw: dev unused), a plain route via the peer on the
// external link ext.
func PeerRoute(dev, ext int, dst netip.Prefix, via netip.Addr, direct bool) netlink.Route {
	r := netlink.Route{LinkIndex: dev, Dst: IPNet(dst), Gw: via.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
		Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	if direct {
		r.LinkIndex, r.Flags = ext, 0
	}
	return r
}

// PeerRoutes are weft's routes of one family on a tunnel device dev and
// on the external link ext (its DirectRouting routes; dev -1: those only),
// by destination: what a backend compares its plan with.
func PeerRoutes(k Kernel, ipv6 bool, dev, ext int) (map[netip.Prefix]netlink.Route, error) {
	owned, err := OwnedRoutes(k)
	if err != nil {
		return nil, err
	}
	// Another backend's routes (a switch of Backend.Type) are pruned by its
	// own cleanup.
	return RoutesByDst(owned, func(r netlink.Route) bool {
		dst, _ := Prefix(r.Dst)
		return (r.LinkIndex == dev || r.LinkIndex == ext) && dst.Addr().Is6() == ipv6
	}), nil
}
