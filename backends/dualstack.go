package backends

import (
	"context"
	"encoding/json"
	"errors"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/mesh"
)

// dualStack drives a dual-stack network through two instances of one
// backend, one per family, as flannel's vxlan does with flannel.<VNI> and
// flannel-v6.<VNI>: the IPv4 instance gets each desired state as it is,
// the IPv6 one its IPv6 half (mesh.Desired.IPv6Half), so a backend written
// for one family carries both unchanged.
type dualStack struct {
	v4, v6 Backend
}

// Setup sets up both halves.
func (d *dualStack) Setup(ctx context.Context) error {
	return errors.Join(d.v4.Setup(ctx), d.v6.Setup(ctx))
}

// BackendData is the IPv4 half's; BackendV6Data the IPv6 half's.
func (d *dualStack) BackendData() json.RawMessage { return d.v4.BackendData() }

// BackendV6Data is what the IPv6 half publishes (flannel's BackendV6Data).
func (d *dualStack) BackendV6Data() json.RawMessage { return d.v6.BackendData() }

// MTU is the smaller of the two: a container has one MTU for both
// families, and the IPv6 underlay's header is the larger.
func (d *dualStack) MTU() int { return min(d.v4.MTU(), d.v6.MTU()) }

// Apply applies the state to the IPv4 half and its IPv6 half to the IPv6
// one; a failure of one does not keep the other from being applied.
func (d *dualStack) Apply(ctx context.Context, want mesh.Desired) error {
	return errors.Join(d.v4.Apply(ctx, want), d.v6.Apply(ctx, want.IPv6Half()))
}

// ApplyDelta applies the delta to both halves; when either cannot take it
// alone, the Reconciler is asked for a whole apply (which both take again,
// harmlessly).
func (d *dualStack) ApplyDelta(ctx context.Context, delta mesh.Delta) error {
	v4, ok4 := d.v4.(mesh.DeltaApplier)
	v6, ok6 := d.v6.(mesh.DeltaApplier)
	if !ok4 || !ok6 {
		return mesh.ErrWholeApply
	}
	err4, err6 := v4.ApplyDelta(ctx, delta), v6.ApplyDelta(ctx, delta.IPv6Half())
	if errors.Is(err4, mesh.ErrWholeApply) || errors.Is(err6, mesh.ErrWholeApply) {
		return mesh.ErrWholeApply
	}
	return errors.Join(err4, err6)
}

// Cleanup removes both halves.
func (d *dualStack) Cleanup(ctx context.Context) error {
	return errors.Join(d.v4.Cleanup(ctx), d.v6.Cleanup(ctx))
}

// Close closes both halves, leaving their data paths in place.
func (d *dualStack) Close() error { return errors.Join(d.v4.Close(), d.v6.Close()) }

// ipv6Only drives an IPv6-only network ("EnableIPv4": false) through one
// instance of a backend built for the IPv6 half, given the IPv6 half of
// each desired state. Its lease publishes no BackendData, only
// BackendV6Data, as flannel's do.
type ipv6Only struct {
	v6 Backend
}

// Setup sets up the IPv6 instance.
func (o *ipv6Only) Setup(ctx context.Context) error { return o.v6.Setup(ctx) }

// BackendData is empty: the lease has no IPv4 half.
func (o *ipv6Only) BackendData() json.RawMessage { return nil }

// BackendV6Data is the IPv6 instance's data.
func (o *ipv6Only) BackendV6Data() json.RawMessage { return o.v6.BackendData() }

// MTU is the IPv6 instance's.
func (o *ipv6Only) MTU() int { return o.v6.MTU() }

// Apply applies the state's IPv6 half.
func (o *ipv6Only) Apply(ctx context.Context, want mesh.Desired) error {
	return o.v6.Apply(ctx, want.IPv6Half())
}

// ApplyDelta applies the delta's IPv6 half.
func (o *ipv6Only) ApplyDelta(ctx context.Context, delta mesh.Delta) error {
	if d, ok := o.v6.(mesh.DeltaApplier); ok {
		return d.ApplyDelta(ctx, delta.IPv6Half())
	}
	return mesh.ErrWholeApply
}

// Cleanup removes the IPv6 instance's data path.
func (o *ipv6Only) Cleanup(ctx context.Context) error { return o.v6.Cleanup(ctx) }

// Close closes the IPv6 instance.
func (o *ipv6Only) Close() error { return o.v6.Close() }

// wireguardIPv6Only is the wireguard backend on an IPv6-only network:
// ipv6Only with key rotation and device status.
type wireguardIPv6Only struct {
	ipv6Only
	wg *wireguard.Backend
}

// ReloadKey rotates or reloads the device's key.
func (w *wireguardIPv6Only) ReloadKey(rotate bool) (bool, error) { return w.wg.ReloadKey(rotate) }

// OnDemand is the device's on-demand state.
func (w *wireguardIPv6Only) OnDemand() wireguard.OnDemandStats { return w.wg.OnDemand() }

// Status is the device's.
func (w *wireguardIPv6Only) Status() (*wgtypes.Device, error) { return w.wg.Status() }

// wireguardSeparate is Mode "separate" of the wireguard backend on a
// dual-stack network: a device per family, one key. A rotation is done by
// the IPv4 half and adopted from the key file by the IPv6 one; status
// shows the IPv4 device.
type wireguardSeparate struct {
	dualStack
	wg4, wg6 *wireguard.Backend
}

// ReloadKey rotates or reloads the key on the IPv4 device and has the IPv6
// device load the same key.
func (w *wireguardSeparate) ReloadKey(rotate bool) (bool, error) {
	changed, err := w.wg4.ReloadKey(rotate)
	if err != nil {
		return false, err
	}
	changed6, err := w.wg6.ReloadKey(false)
	return changed || changed6, err
}

// OnDemand is the IPv4 device's on-demand state.
func (w *wireguardSeparate) OnDemand() wireguard.OnDemandStats { return w.wg4.OnDemand() }

// Status is the IPv4 device's.
func (w *wireguardSeparate) Status() (*wgtypes.Device, error) { return w.wg4.Status() }

var (
	_ DualStack         = (*dualStack)(nil)
	_ mesh.DeltaApplier = (*dualStack)(nil)
	_ KeyReloader       = (*wireguardSeparate)(nil)
	_ DeviceStatus      = (*wireguardSeparate)(nil)
	_ DualStack         = (*wireguard.Backend)(nil)
	_ DualStack         = (*ipv6Only)(nil)
	_ mesh.DeltaApplier = (*ipv6Only)(nil)
	_ KeyReloader       = (*wireguardIPv6Only)(nil)
	_ DeviceStatus      = (*wireguardIPv6Only)(nil)
	_ OnDemandReporter  = (*wireguardSeparate)(nil)
	_ OnDemandReporter  = (*wireguardIPv6Only)(nil)
)
