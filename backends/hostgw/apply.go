package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/mesh"
)

// Backend programs host-gw routes. The zero value is not usable; use New.
type Backend struct {
	ext    netutil.ExternalInterface
	handle *netlink.Handle
	log    *slog.Logger
}

// New returns a host-gw backend working through handle (nil: this netns).
func New(ext netutil.ExternalInterface, handle *netlink.Handle, log *slog.Logger) *Backend {
	if handle == nil {
		handle = &netlink.Handle{}
	}
	return &Backend{ext: ext, handle: handle, log: log.With("component", "host-gw")}
}

// MTU is the external link's: host-gw adds no header.
func (b *Backend) MTU() int { return b.ext.MTU }

// Setup does nothing: host-gw has no device of its own.
func (b *Backend) Setup(context.Context) error { return nil }

// BackendData is empty: peers need only the PublicIP.
func (b *Backend) BackendData() json.RawMessage { return nil }

// Apply makes the kernel's weft routes equal the plan: it adds or fixes
// what is missing first, then removes what no peer needs, keeps going past
// failures and returns them all joined.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	want, problems := Plan(d, b.ext)
	have, err := netutil.OwnedRoutes(b.handle)
	if err != nil {
		return errors.Join(append(problems, fmt.Errorf("listing routes: %w", err))...)
	}
	current := make(map[netip.Prefix]netlink.Route, len(have))
	for _, r := range have {
		if dst, ok := netutil.Prefix(r.Dst); ok {
			current[dst] = r
		}
	}
	return errors.Join(append(problems, b.sync(current, want)...)...)
}

// ApplyDelta changes only the routes of the peers in the delta: the old
// plan of those peers stands for what the kernel holds, so nothing is
// listed and the cost does not grow with the number of peers.
func (b *Backend) ApplyDelta(_ context.Context, d mesh.Delta) error {
	before, _ := Plan(d.Before(), b.ext)
	want, problems := Plan(d.After(), b.ext)
	current := make(map[netip.Prefix]netlink.Route, len(before))
	for _, r := range before {
		current[r.Dst] = *b.route(r)
	}
	return errors.Join(append(problems, b.sync(current, want)...)...)
}

// sync sets every wanted route that current lacks or has differently, then
// deletes the routes in current that nothing wants.
func (b *Backend) sync(current map[netip.Prefix]netlink.Route, want []Route) []error {
	var errs []error
	keep := make(map[netip.Prefix]bool, len(want))
	for _, r := range want {
		keep[r.Dst] = true
		if cur, ok := current[r.Dst]; ok && netutil.Addr(cur.Gw) == r.Gateway && cur.LinkIndex == b.ext.Index {
			continue
		}
		if err := netutil.CountWrite(b.handle.RouteReplace(b.route(r))); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", r.Dst, r.Gateway, err))
			continue
		}
		b.log.Info("route set", "dst", r.Dst, "via", r.Gateway, "dev", b.ext.Name)
	}
	for dst, r := range current {
		if keep[dst] {
			continue
		}
		if err := netutil.CountWrite(b.handle.RouteDel(&r)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			continue
		}
		b.log.Info("route removed", "dst", dst)
	}
	return errs
}

func (b *Backend) route(r Route) *netlink.Route {
	return &netlink.Route{
		LinkIndex: b.ext.Index,
		Dst:       netutil.IPNet(r.Dst),
		Gw:        r.Gateway.AsSlice(),
		Protocol:  netutil.RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
}

// Cleanup removes every route weft installed.
func (b *Backend) Cleanup(context.Context) error {
	have, err := netutil.OwnedRoutes(b.handle)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range have {
		if err := b.handle.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close leaves the routes in place: traffic keeps flowing across a restart.
func (b *Backend) Close() error { return nil }
