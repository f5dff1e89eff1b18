package hostgw

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Backend programs host-gw routes. The zero value is not usable; use New.
type Backend struct {
	ext    underlay.ExternalInterface
	kernel netkernel.Kernel
	log    *slog.Logger
}

// New returns a host-gw backend programming kernel.
func New(ext underlay.ExternalInterface, kernel netkernel.Kernel, log *slog.Logger) *Backend {
	return &Backend{ext: ext, kernel: kernel, log: log.With("component", "host-gw")}
}

// Footprint is empty: host-gw makes only routes (marked RouteProtocol).
func Footprint() netkernel.Footprint { return netkernel.Footprint{} }

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
	current, err := b.ownRoutes()
	if err != nil {
		return errors.Join(append(problems, fmt.Errorf("listing routes: %w", err))...)
	}
	return errors.Join(append(problems, netkernel.SyncPeerRoutes(b.kernel, -1, b.ext.Index, current, want, b.log.With("dev", b.ext.Name))...)...)
}

// ApplyDelta changes only the routes of the peers in the delta: the old
// plan of those peers stands for what the kernel holds, so nothing is
// listed and the cost does not grow with the number of peers.
func (b *Backend) ApplyDelta(_ context.Context, d mesh.Delta) error {
	before, _ := Plan(d.Before(), b.ext)
	want, problems := Plan(d.After(), b.ext)
	current := netkernel.PlannedRoutes(-1, b.ext.Index, before)
	return errors.Join(append(problems, netkernel.SyncPeerRoutes(b.kernel, -1, b.ext.Index, current, want, b.log.With("dev", b.ext.Name))...)...)
}

// Cleanup removes every route weft installed on the external link.
func (b *Backend) Cleanup(context.Context) error {
	have, err := b.ownRoutes()
	if err != nil {
		return err
	}
	return errors.Join(netkernel.SyncRoutes(b.kernel, have, nil, nil)...)
}

// ownRoutes are weft's routes on the external link, host-gw's: weft's
// routes on its devices (a WireGuard device's Network route, while a
// switch runs both) are the other backends'.
func (b *Backend) ownRoutes() (map[netip.Prefix]netkernel.Hop, error) {
	onExt := func(_ netip.Prefix, h netkernel.Hop) bool { return h.Link == b.ext.Index }
	have, err := netkernel.OwnedHops(b.kernel, false, onExt)
	if err != nil {
		return nil, err
	}
	v6, err := netkernel.OwnedHops(b.kernel, true, onExt)
	maps.Copy(have, v6)
	return have, err
}

// Close leaves the routes in place: traffic keeps flowing across a restart.
func (b *Backend) Close() error { return nil }
