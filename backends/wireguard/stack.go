package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Stack is the wireguard backend of a network across its address
// families: one device (an IPv4 network, or Mode auto, ipv4 or ipv6 on
// dual stack), a device per family (Mode "separate" on dual stack, as
// flannel's flannel-wg and flannel-wg-v6, one key), or the IPv6 device
// alone (an IPv6-only network). Every capability of a device is the
// stack's: a key rotation is done by the first device and adopted from
// the key file by the other; status and on-demand counts are the first
// device's.
type Stack struct {
	devices []*Backend
	// ipv6Half[i] is set when devices[i] carries the IPv6 half of each
	// desired state (mesh.Desired.IPv6Half) rather than all of it.
	ipv6Half []bool
	// ipv6Only: the lease has no IPv4 half, so no BackendData.
	ipv6Only bool
}

// NewStack builds the devices cfg's network needs (see Stack).
func NewStack(cfg *lease.Config, ext underlay.ExternalInterface, keyFile string, kernel netkernel.Kernel, calls *netkernel.Calls, log *slog.Logger) (*Stack, error) {
	raw := cfg.Backend.Raw
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	if !cfg.EnableIPv4 {
		// IPv6-only: the IPv6 device of Mode "separate" (flannel makes
		// only flannel-wg-v6 then), or the one device of the others.
		build := New
		if opts.Mode == ModeSeparate {
			build = NewIPv6
		}
		wg, err := build(raw, ext, keyFile, kernel, calls, log)
		if err != nil {
			return nil, err
		}
		return &Stack{devices: []*Backend{wg}, ipv6Half: []bool{true}, ipv6Only: true}, nil
	}
	wg4, err := New(raw, ext, keyFile, kernel, calls, log)
	if err != nil {
		return nil, err
	}
	s := &Stack{devices: []*Backend{wg4}, ipv6Half: []bool{false}}
	if cfg.EnableIPv6 && opts.Mode == ModeSeparate {
		wg6, err := NewIPv6(raw, ext, keyFile, kernel, calls, log)
		if err != nil {
			return nil, err
		}
		s.devices, s.ipv6Half = append(s.devices, wg6), append(s.ipv6Half, true)
	}
	return s, nil
}

// Devices are the stack's devices, the first one first.
func (s *Stack) Devices() []*Backend { return s.devices }

// OverrideImplementation sets this host's implementation on every device
// (see Backend.OverrideImplementation).
func (s *Stack) OverrideImplementation(impl, from string) error {
	for _, d := range s.devices {
		if err := d.OverrideImplementation(impl, from); err != nil {
			return err
		}
	}
	return nil
}

// CarryMTU raises every device's MTU to mtu when that is larger (see
// Backend.CarryMTU).
func (s *Stack) CarryMTU(mtu int) {
	for _, d := range s.devices {
		d.CarryMTU(mtu)
	}
}

// CarriedMTU is the largest MTU a device carries above its own, else 0.
func (s *Stack) CarriedMTU() int {
	c := 0
	for _, d := range s.devices {
		c = max(c, d.CarriedMTU())
	}
	return c
}

// SetBehindNAT marks every device as behind NAT (see Backend.SetBehindNAT).
func (s *Stack) SetBehindNAT() {
	for _, d := range s.devices {
		d.SetBehindNAT()
	}
}

// half is the part of want device i carries.
func (s *Stack) half(i int, want mesh.Desired) mesh.Desired {
	if s.ipv6Half[i] {
		return want.IPv6Half()
	}
	return want
}

// Setup sets up every device.
func (s *Stack) Setup(ctx context.Context) error {
	var errs []error
	for _, d := range s.devices {
		errs = append(errs, d.Setup(ctx))
	}
	return errors.Join(errs...)
}

// BackendData is what the lease publishes for its IPv4 half: the first
// device's key and port (none on an IPv6-only network).
func (s *Stack) BackendData() json.RawMessage {
	if s.ipv6Only {
		return nil
	}
	return s.devices[0].BackendData()
}

// BackendV6Data is what the lease publishes for its IPv6 half: the IPv6
// device's, or the one device's.
func (s *Stack) BackendV6Data() json.RawMessage { return s.devices[len(s.devices)-1].BackendData() }

// MTU is the smallest of the devices': a container has one MTU for both
// families, and the IPv6 underlay's header is the larger.
func (s *Stack) MTU() int {
	mtu := s.devices[0].MTU()
	for _, d := range s.devices[1:] {
		mtu = min(mtu, d.MTU())
	}
	return mtu
}

// Apply applies each device its part; a failure of one does not keep the
// other from being applied.
func (s *Stack) Apply(ctx context.Context, want mesh.Desired) error {
	var errs []error
	for i, d := range s.devices {
		errs = append(errs, d.Apply(ctx, s.half(i, want)))
	}
	return errors.Join(errs...)
}

// ApplyDelta applies each device its part of the delta; when any cannot
// take it alone, the Reconciler is asked for a whole apply (which the
// others take again, harmlessly).
func (s *Stack) ApplyDelta(ctx context.Context, delta mesh.Delta) error {
	var errs []error
	whole := false
	for i, d := range s.devices {
		part := delta
		if s.ipv6Half[i] {
			part = delta.IPv6Half()
		}
		err := d.ApplyDelta(ctx, part)
		whole = whole || errors.Is(err, mesh.ErrWholeApply)
		errs = append(errs, err)
	}
	if whole {
		return mesh.ErrWholeApply
	}
	return errors.Join(errs...)
}

// ReloadKey rotates or reloads the key on the first device and has the
// other load the same key from the key file.
func (s *Stack) ReloadKey(rotate bool) (bool, error) {
	changed, err := s.devices[0].ReloadKey(rotate)
	if err != nil {
		return false, err
	}
	for _, d := range s.devices[1:] {
		c, err := d.ReloadKey(false)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

// Unwrap is the devices, the IPv4 one first: what a device alone knows
// (its status, its on-demand table, discovery on the IPv4 half) is found
// on them through the stack (backends.As).
func (s *Stack) Unwrap() []mesh.Applier {
	out := make([]mesh.Applier, len(s.devices))
	for i, d := range s.devices {
		out[i] = d
	}
	return out
}

// Cleanup removes every device.
func (s *Stack) Cleanup(ctx context.Context) error {
	var errs []error
	for _, d := range s.devices {
		errs = append(errs, d.Cleanup(ctx))
	}
	return errors.Join(errs...)
}

// Close stops every device's goroutines, leaving the data path.
func (s *Stack) Close() error {
	var errs []error
	for _, d := range s.devices {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}
