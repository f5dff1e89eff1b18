package liveswitch

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Plan is what a run keeps from before: the legacy backends, which backend
// the lease shows as its BackendType, and the MTU the new backend's device
// carries for containers started before.
type Plan struct {
	// Legacy are the backends the host ran before that run beside the
	// config's, the oldest last.
	Legacy []Spec
	// Visible is the backend the lease shows as its BackendType: the one
	// the peers knew.
	Visible string
	// CarriedMTU is the MTU the config's backend carries (0: none).
	CarriedMTU int
	// Previous is this host's lease before this run (nil: none), whose
	// data a backend may keep (vxlan's VTEP MAC across an address change).
	Previous *lease.Attrs
}

// NewPlan reads this host's previous lease (the subnet file's, if it is
// still this host's: self's host ID, or else its PublicIP, and signed by
// self's identity, or unsigned when adoptUnsigned: lease.Owns) and keeps,
// beside cfg's backend, the other backends it published that can run
// beside it (backends.Kind.Coexists).
func NewPlan(ctx context.Context, store lease.Store, subnetFile string, cfg *lease.Config, self lease.Attrs, adoptUnsigned bool,
	log *slog.Logger) Plan {
	plan := Plan{Visible: cfg.Backend.Type}
	saved := ReadState(StateFile(subnetFile))
	if len(saved.Backends) > 0 && saved.Backends[0].Type == cfg.Backend.Type {
		plan.CarriedMTU = boundCarriedMTU(saved.CarriedMTU, subnetFile, log)
	}
	prev, ok := previousLease(ctx, store, subnetFile, cfg, self, adoptUnsigned)
	if ok {
		plan.Previous = &prev.Attrs
	}
	if !ok || !coexists(cfg.Backend.Type) {
		return plan
	}
	for i, p := range prev.Attrs.Paths() {
		typ := p.BackendType
		if typ == cfg.Backend.Type || !coexists(typ) {
			continue
		}
		spec := Spec{Type: typ, Raw: json.RawMessage(fmt.Sprintf(`{"Type":%q}`, typ))}
		if j := slices.IndexFunc(saved.Backends, func(s Spec) bool { return s.Type == typ }); j >= 0 {
			spec = saved.Backends[j]
		}
		plan.Legacy = append(plan.Legacy, spec)
		if i == 0 {
			plan.Visible = typ
		}
	}
	if len(plan.Legacy) > 0 {
		// Containers started under the legacy backend keep the MTU the
		// subnet file gave them until docker restarts.
		if env, err := lease.ReadSubnetFile(subnetFile); err == nil {
			plan.CarriedMTU = max(plan.CarriedMTU, env.MTU)
		}
		log.Info("switching backend: keeping the previous one for peers that have not switched", "backend", cfg.Backend.Type,
			"keeping", plan.LegacyTypes(), "lease_shows", plan.Visible)
	}
	plan.CarriedMTU = boundCarriedMTU(plan.CarriedMTU, subnetFile, log)
	return plan
}

// boundCarriedMTU is mtu when it is one a device may carry, else 0: the
// state file is root's, but an MTU from a damaged one must not reach the
// kernel (the backend takes it only above its own MTU).
func boundCarriedMTU(mtu int, subnetFile string, log *slog.Logger) int {
	if mtu < 0 || mtu > MaxCarriedMTU {
		log.Warn("ignoring the carried MTU of the state file or subnet file: it is no Ethernet MTU", "mtu", mtu,
			"max", MaxCarriedMTU, "state_file", StateFile(subnetFile))
		return 0
	}
	return mtu
}

// MaxCarriedMTU bounds the MTU a device carries for containers started
// under another backend: jumbo frames, and no more.
const MaxCarriedMTU = 9000

// coexists reports whether a backend can run beside others in a switch.
func coexists(typ string) bool {
	k, ok := backends.Lookup(typ)
	return ok && k.Coexists
}

// previousLease is this host's lease before this run: the subnet file's,
// when it still names this host (self: its host ID, or else its PublicIP).
func previousLease(ctx context.Context, store lease.Store, subnetFile string, cfg *lease.Config, self lease.Attrs,
	adoptUnsigned bool) (lease.Lease, bool) {
	env, err := lease.ReadSubnetFile(subnetFile)
	if err != nil || !env.Subnet.IsValid() {
		return lease.Lease{}, false
	}
	key := lease.DualSubnetKey(env.Subnet, env.IPv6Subnet)
	rec, ok, err := store.Get(ctx, key)
	if err != nil || !ok {
		return lease.Lease{}, false
	}
	l, err := lease.DecodeLease(rec.Key, rec.Value)
	if err != nil || (cfg.EnableIPv4 || !l.Attrs.HostID.IsZero()) && !lease.Owns(self, l, adoptUnsigned) {
		return lease.Lease{}, false
	}
	return l, true
}

// LegacyTypes are the Types of the plan's legacy backends.
func (p Plan) LegacyTypes() []string {
	out := make([]string, 0, len(p.Legacy))
	for _, s := range p.Legacy {
		out = append(out, s.Type)
	}
	return out
}

// Preference is the path preference a run of this plan starts with: its
// legacy backends first, until the Keeper has published the new one.
func (p Plan) Preference() mesh.Preference {
	if len(p.Legacy) == 0 {
		return mesh.Preference{}
	}
	return mesh.Preference{Legacy: p.LegacyTypes(), LegacyFirst: true}
}
