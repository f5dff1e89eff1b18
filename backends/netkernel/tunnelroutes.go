package netkernel

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/underlay"
)

// Nexthops are the nexthop objects a tunnel device's IPv4 peer routes go
// through: one per peer, with NexthopID of its gateway for ID, made by
// weft (RouteProtocol, onlink on the device). A nil *Nexthops stands for
// none: the routes carry their gateways, as on a kernel without nexthop
// objects.
type Nexthops struct {
	dev int
	// read: ours holds what the kernel has (a whole apply read it);
	// otherwise (a delta) an object is created, and replaced when its ID
	// exists.
	read bool
	// ours are weft's objects on dev that send where their IDs say
	// (NexthopID of their gateway), and wrong those of weft's on dev that
	// do not: used up as a sync takes them, so what is left is not
	// wanted. (A set of IDs is a quarter of a map of IDs to gateways.)
	ours  map[uint32]struct{}
	wrong map[uint32]bool
	// taken are IDs of objects weft did not make on dev (another program's,
	// or another device's): never written; those peers' routes carry
	// their gateways.
	taken map[uint32]bool
}

// ErrNoNexthops says the kernel has no nexthop objects (older than 5.3,
// or built without them): routes carry their gateways.
var ErrNoNexthops = errors.New("the kernel has no nexthop objects")

// ReadNexthops reads the nexthop objects for a sync of dev's routes: weft's
// on dev, and every ID others hold.
func ReadNexthops(k Kernel, dev int) (*Nexthops, error) {
	n, err := Retry(func() (*Nexthops, error) {
		n := &Nexthops{dev: dev, read: true, ours: map[uint32]struct{}{}, wrong: map[uint32]bool{}, taken: map[uint32]bool{}}
		err := k.NexthopEach(func(nh Nexthop) {
			switch {
			case nh.Protocol != uint8(RouteProtocol) || nh.Link != dev:
				n.taken[nh.ID] = true
			case nh.OnLink && NexthopID(nh.Gw) == nh.ID:
				n.ours[nh.ID] = struct{}{}
			default:
				n.wrong[nh.ID] = true
			}
		})
		return n, err
	})
	if nexthopsUnsupported(err) {
		return nil, fmt.Errorf("%w: %v", ErrNoNexthops, err)
	}
	return n, err
}

// Taken are the IDs others held when n was read, for the deltas that
// follow a whole apply.
func (n *Nexthops) Taken() map[uint32]bool {
	if n == nil {
		return nil
	}
	return n.taken
}

// DeltaNexthops are the nexthop objects of dev for a delta, which reads
// nothing from the kernel: taken are the IDs others held at the last whole
// apply.
func DeltaNexthops(dev int, taken map[uint32]bool) *Nexthops {
	return &Nexthops{dev: dev, taken: taken}
}

// id is the nexthop object route r goes through: 0 for none (no objects,
// a direct route, IPv6, or an ID another program holds).
func (n *Nexthops) id(r underlay.Route) uint32 {
	if n == nil || r.Direct || !r.Via.Is4() {
		return 0
	}
	id := NexthopID(r.Via)
	if n.taken[id] {
		return 0
	}
	return id
}

// ensure makes object id send to gw. A whole apply writes it only when the
// kernel lacks it or holds it with another gateway; a delta creates it,
// and replaces one left from before.
func (n *Nexthops) ensure(k Kernel, id uint32, gw netip.Addr) error {
	nh := Nexthop{ID: id, Link: n.dev, Gw: gw, OnLink: true, Protocol: uint8(RouteProtocol)}
	if n.read {
		if _, ok := n.ours[id]; ok {
			delete(n.ours, id)
			return nil
		}
		wrong := n.wrong[id]
		delete(n.wrong, id)
		return k.NexthopSet(nh, wrong)
	}
	err := k.NexthopSet(nh, false)
	if errors.Is(err, unix.EEXIST) {
		err = k.NexthopSet(nh, true)
	}
	return err
}

// PlannedTunnelRoutes are the kernel routes of a plan on tunnel device dev
// (and the external link ext), by destination, with the nexthop objects
// nhs gives them: what the last apply put there, which a delta compares
// its new plan with.
func PlannedTunnelRoutes(dev, ext int, plan []underlay.Route, nhs *Nexthops) map[netip.Prefix]Hop {
	out := PlannedRoutes(dev, ext, plan)
	for _, r := range plan {
		if id := nhs.id(r); id != 0 {
			h := out[r.Dst]
			h.NH = id
			out[r.Dst] = h
		}
	}
	return out
}

// TunnelRoutes are weft's routes of one family on tunnel device dev and on
// the external link ext, by destination, with those through weft's
// nexthop objects on dev (which a kernel in nexthop_compat_mode 0 reports
// without link or gateway).
func TunnelRoutes(k Kernel, ipv6 bool, dev, ext int, nhs *Nexthops) (map[netip.Prefix]Hop, error) {
	return OwnedHops(k, ipv6, func(_ netip.Prefix, h Hop) bool {
		if h.Link == dev || h.Link == ext {
			return true
		}
		if h.NH == 0 || nhs == nil {
			return false
		}
		_, ours := nhs.ours[h.NH]
		return ours || nhs.wrong[h.NH]
	})
}

// SyncTunnelRoutes is SyncPeerRoutes for a tunnel device whose IPv4 peer
// routes go through nexthop objects (nhs; nil: none): it makes each
// wanted route's object and route, deletes the routes nothing wants, and
// then the objects nothing wants. current is used up.
func SyncTunnelRoutes(k Kernel, dev, ext int, current map[netip.Prefix]Hop, want iter.Seq[underlay.Route], nhs *Nexthops, log *slog.Logger) []error {
	var errs []error
	// A delta's objects in use: a route leaving must not take an object
	// a route staying goes through. (A whole apply knows them: ours.)
	var inUse map[uint32]bool
	if nhs != nil && !nhs.read {
		inUse = map[uint32]bool{}
	}
	for r := range want {
		route := PeerRoute(dev, ext, r)
		cur, ok := current[r.Dst]
		delete(current, r.Dst)
		id := nhs.id(r)
		if inUse != nil && id != 0 {
			inUse[id] = true
		}
		if id != 0 && !nhs.read && ok && cur.NH == id {
			continue // a delta trusts its plan, as for the other entries
		}
		if id != 0 {
			if err := nhs.ensure(k, id, r.Via); err != nil {
				errs = append(errs, fmt.Errorf("nexthop %d via %s: %w", id, r.Via, err))
				id = 0 // the route carries its gateway instead
			}
		}
		switch {
		case id != 0 && ok && cur.NH == id:
			continue
		case id != 0:
			if err := k.RouteReplaceNexthop(r.Dst, id); err != nil {
				errs = append(errs, fmt.Errorf("route %s via nexthop %d (%s): %w", r.Dst, id, r.Via, err))
				continue
			}
		case ok && cur.NH == 0 && cur.Link == route.LinkIndex && cur.Gw == Addr(route.Gw):
			continue
		default:
			if err := k.RouteReplace(&route); err != nil {
				errs = append(errs, fmt.Errorf("route %s via %s: %w", r.Dst, r.Via, err))
				continue
			}
		}
		if log != nil {
			log.Info("route set", "dst", r.Dst, "via", r.Via, "nexthop", id)
		}
	}
	for dst, hop := range current {
		if err := k.RouteDel(hop.route(dst)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			continue
		}
		if inUse != nil && hop.NH != 0 && !inUse[hop.NH] && !nhs.taken[hop.NH] {
			if err := k.NexthopDel(hop.NH); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing nexthop %d: %w", hop.NH, err))
			}
		}
		if log != nil {
			log.Info("route removed", "dst", dst)
		}
	}
	if nhs != nil && nhs.read {
		for id := range nhs.ours {
			nhs.wrong[id] = true
		}
		for id := range nhs.wrong {
			if err := k.NexthopDel(id); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing nexthop %d: %w", id, err))
			}
		}
	}
	return errs
}
