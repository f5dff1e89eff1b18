package netkernel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends/underlay"
	"golang.org/x/sys/unix"
)

// Hop is where one of weft's routes sends traffic: its link and gateway,
// all a sync compares. A dump of 50,000 routes kept as netlink.Route (376
// bytes each, with allocations of their own) and indexed in a map of them
// was some 50 MB at every resync; as Hops it is about 4 MB.
type Hop struct {
	Link int
	Gw   netip.Addr
	// NH is the nexthop object the route goes through (0: none, the route
	// carries its gateway); Link and Gw are then the object's, as the
	// kernel reports them.
	NH uint32
}

// route is the route to dst that h stands for, as weft installs it: what
// deleting it names. A route through a nexthop object is named by its
// destination alone: the kernel matches no gateway or link against one.
func (h Hop) route(dst netip.Prefix) *netlink.Route {
	r := &netlink.Route{Dst: IPNet(dst), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	if h.NH != 0 {
		return r
	}
	r.LinkIndex = h.Link
	if h.Gw.IsValid() {
		r.Gw = h.Gw.AsSlice()
	}
	return r
}

// OwnedHops are weft's routes (RouteProtocol, main table) of one family
// whose destination and Hop keep accepts, by destination, read one at a
// time from the dump.
func OwnedHops(k Kernel, ipv6 bool, keep func(dst netip.Prefix, h Hop) bool) (map[netip.Prefix]Hop, error) {
	family := netlink.FAMILY_V4
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	return Retry(func() (map[netip.Prefix]Hop, error) {
		out := map[netip.Prefix]Hop{}
		err := k.HopEach(family, func(dst netip.Prefix, h Hop) {
			if dst.Addr().Is6() == ipv6 && keep(dst, h) {
				out[dst] = h
			}
		})
		return out, err
	})
}

// SyncRoutes makes current into want, the way every backend programs its
// routes: it sets each wanted route that current lacks or holds with
// another gateway or link, then deletes the routes of current that nothing
// wants. current is what the kernel holds (a dump) or, for a delta, what
// the last apply put there; it is used up (what is left of it is what was
// deleted). It keeps going past failures and returns them all; log (nil
// for none) gets a line per route set or removed.
func SyncRoutes(k Kernel, current map[netip.Prefix]Hop, want []netlink.Route, log *slog.Logger) []error {
	return syncRoutes(k, current, len(want), func(i int) netlink.Route { return want[i] }, log)
}

// syncRoutes is SyncRoutes over n wanted routes that route(i) builds one
// at a time, as each is compared and sent: a netlink.Route is about 300
// bytes, and a slice of them all was 15 MB at 50,000 peers.
func syncRoutes(k Kernel, current map[netip.Prefix]Hop, n int, route func(int) netlink.Route, log *slog.Logger) []error {
	var errs []error
	// current is used up as it is compared: a route wanted is taken out
	// of it, and what is left is deleted. (A set of what stays was one
	// more map of every peer at a resync.)
	for i := range n {
		r := route(i)
		dst, _ := Prefix(r.Dst)
		cur, ok := current[dst]
		delete(current, dst)
		if ok && cur.Link == r.LinkIndex && cur.Gw == Addr(r.Gw) {
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
	for dst, hop := range current {
		if err := k.RouteDel(hop.route(dst)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			continue
		}
		if log != nil {
			log.Info("route removed", "dst", dst)
		}
	}
	return errs
}

// PeerRoute is the kernel route of a planned route r: via the peer's
// address onlink on the tunnel device dev or, Direct, a plain route via the
// peer on the external link ext.
func PeerRoute(dev, ext int, r underlay.Route) netlink.Route {
	route := netlink.Route{LinkIndex: dev, Dst: IPNet(r.Dst), Gw: r.Via.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
		Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	if r.Direct {
		route.LinkIndex, route.Flags = ext, 0
	}
	return route
}

// PlannedRoutes are the kernel routes of a plan, by destination: what the
// last apply put there, which a delta compares its new plan with.
func PlannedRoutes(dev, ext int, plan []underlay.Route) map[netip.Prefix]Hop {
	out := make(map[netip.Prefix]Hop, len(plan))
	for _, r := range plan {
		route := PeerRoute(dev, ext, r)
		out[r.Dst] = Hop{Link: route.LinkIndex, Gw: Addr(route.Gw)}
	}
	return out
}

// SyncPeerRoutes makes a device's peer routes current (a dump, or
// PlannedRoutes of the last plan) into want, as SyncRoutes: dev is the
// tunnel device (-1 for none: host-gw, DirectRouting), ext the external
// link's index.
func SyncPeerRoutes(k Kernel, dev, ext int, current map[netip.Prefix]Hop, want []underlay.Route, log *slog.Logger) []error {
	return syncRoutes(k, current, len(want), func(i int) netlink.Route { return PeerRoute(dev, ext, want[i]) }, log)
}

// PeerRoutes are weft's routes of one family on a tunnel device dev and
// on the external link ext (its DirectRouting routes; dev -1: those only),
// by destination: what a backend compares its plan with.
func PeerRoutes(k Kernel, ipv6 bool, dev, ext int) (map[netip.Prefix]Hop, error) {
	// Another backend's routes (a switch of Backend.Type) are pruned by its
	// own cleanup.
	return OwnedHops(k, ipv6, func(_ netip.Prefix, h Hop) bool { return h.Link == dev || h.Link == ext })
}
