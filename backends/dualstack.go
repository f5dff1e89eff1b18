package backends

import (
	"context"
	"encoding/json"
	"errors"

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

// Unwrap is the two halves, IPv4 first.
func (d *dualStack) Unwrap() []mesh.Applier { return []mesh.Applier{d.v4, d.v6} }

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

// Unwrap is the IPv6 instance.
func (o *ipv6Only) Unwrap() []mesh.Applier { return []mesh.Applier{o.v6} }

var (
	_ DualStack         = (*dualStack)(nil)
	_ mesh.DeltaApplier = (*dualStack)(nil)
	_ DualStack         = (*wireguard.Stack)(nil)
	_ DualStack         = (*ipv6Only)(nil)
	_ mesh.DeltaApplier = (*ipv6Only)(nil)
	_ Wrapper           = (*dualStack)(nil)
	_ Wrapper           = (*ipv6Only)(nil)
)
