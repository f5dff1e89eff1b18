package liveswitch

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Settle is how long a host publishes a backend before it sends over it,
// and how long a legacy backend must go unused before it goes: long enough
// for every peer's watch to have seen the change (milliseconds on a
// healthy etcd).
const Settle = 2 * time.Second

// Reconciler is what the Keeper needs of the reconcile loop
// (mesh.Reconciler).
type Reconciler interface {
	// Pause runs f while no reconcile pass runs, then has the next pass
	// apply the whole state.
	Pause(f func())
	// SetPreference changes the path preference; the Keeper calls it
	// inside Pause.
	SetPreference(mesh.Preference)
}

// LeaseSource is the lease set the Keeper reads which backends the peers
// still need (lease.Watcher).
type LeaseSource interface {
	Leases() []lease.Lease
}

// OwnLease is this host's lease, which the Keeper republishes
// (lease.Holder).
type OwnLease interface {
	Current() lease.Lease
	SetAttrs(lease.Attrs)
}

var (
	_ Reconciler  = (*mesh.Reconciler)(nil)
	_ LeaseSource = (*lease.Watcher)(nil)
	_ OwnLease    = (*lease.Holder)(nil)
)

// Keeper moves this host through a switch: it publishes the new backend
// once the first apply prepared its peers, moves the peers that speak it
// there after Settle, and retires each legacy backend no peer has needed
// for Settle, until the lease is the new backend's alone, byte for byte as
// flannel writes it. Outside a switch it only writes the state file, for
// the switch that may come.
type Keeper struct {
	// Settle is how long each step waits (the constant Settle; tests
	// shorten it).
	Settle time.Duration

	cfg        *lease.Config
	switching  *Switching // nil outside a switch
	reconciler Reconciler
	leases     LeaseSource
	own        OwnLease
	base       lease.Attrs
	visible    string
	stateFile  string
	primary    Spec
	specs      map[string]Spec
	preference mesh.Preference
	carriedMTU int
	log        *slog.Logger

	applied  chan struct{}
	once     sync.Once
	unneeded map[string]time.Time
}

// KeeperConfig is what a Keeper is made of.
type KeeperConfig struct {
	// Config is the running network config; Backend the running backend
	// (a Switching during a switch) and Plan the plan it was built by.
	Config  *lease.Config
	Backend backends.Backend
	Plan    Plan
	// SubnetFile is the subnet file's path; the state file is beside it.
	SubnetFile string
	Reconciler Reconciler
	Leases     LeaseSource
	Own        OwnLease
	// Base are the lease's attributes outside a switch (its addresses).
	Base lease.Attrs
	Log  *slog.Logger
}

// NewKeeper makes the keeper of a run; outside a switch it writes the
// state file at once.
func NewKeeper(c KeeperConfig) *Keeper {
	k := &Keeper{Settle: Settle, cfg: c.Config, reconciler: c.Reconciler, leases: c.Leases, own: c.Own, base: c.Base,
		visible: c.Plan.Visible, stateFile: StateFile(c.SubnetFile), primary: Spec{Type: c.Config.Backend.Type, Raw: c.Config.Backend.Raw},
		specs: map[string]Spec{}, preference: c.Plan.Preference(), log: c.Log.With("component", "switch"), applied: make(chan struct{})}
	for _, s := range c.Plan.Legacy {
		k.specs[s.Type] = s
	}
	if mtu, ok := backends.CarriedMTU(c.Backend); ok {
		k.carriedMTU = mtu
	}
	k.switching, _ = c.Backend.(*Switching)
	if k.switching == nil {
		k.writeState()
	}
	return k
}

// Switching reports whether this run is in a switch (Run has work).
func (k *Keeper) Switching() bool { return k.switching != nil }

// FirstApplied is the reconciler's signal that the standby peers are
// prepared (mesh.Reconciler.OnApplied).
func (k *Keeper) FirstApplied() { k.once.Do(func() { close(k.applied) }) }

// Run keeps the switch going until it is done or ctx ends; outside a
// switch it returns at once.
func (k *Keeper) Run(ctx context.Context) error {
	if k.switching == nil {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-k.applied:
	}
	k.publish()
	k.log.Info("switching backend: published; moving peers that speak it after the settle time", "backend", k.cfg.Backend.Type, "settle", k.Settle)
	if !sleep(ctx, k.Settle) {
		return ctx.Err()
	}
	k.reconciler.Pause(func() {
		k.preference.LegacyFirst = false
		k.reconciler.SetPreference(k.preference)
	})
	k.unneeded = map[string]time.Time{}
	for {
		if !sleep(ctx, k.Settle/2) {
			return ctx.Err()
		}
		done := false
		k.reconciler.Pause(func() { done = k.retireUnneeded(ctx) })
		if done {
			k.log.Info("switching backend: done; every peer speaks it", "backend", k.cfg.Backend.Type)
			return nil
		}
	}
}

// retireUnneeded retires the legacy backends no lease has needed for
// twice Settle and a half (the reconciler paused); it says whether none
// is left.
func (k *Keeper) retireUnneeded(ctx context.Context) bool {
	needed := map[string]bool{}
	self := k.own.Current()
	for _, l := range k.leases.Leases() {
		if l.Subnet == self.Subnet && l.IPv6Subnet == self.IPv6Subnet {
			continue
		}
		if k.preference.Check(l, k.cfg) != "" {
			continue
		}
		if p, ok := k.preference.Path(l, k.cfg); ok {
			needed[mesh.PathType(p, k.cfg)] = true
		}
	}
	now := time.Now()
	for _, typ := range k.switching.Legacy() {
		if needed[typ] {
			delete(k.unneeded, typ)
			continue
		}
		// A peer that has just switched sends over the old backend until
		// its own settle time is over: the old path goes only after that,
		// with a margin for its watch.
		if since, ok := k.unneeded[typ]; !ok {
			k.unneeded[typ] = now
			continue
		} else if now.Sub(since) < 2*k.Settle+k.Settle/2 {
			continue
		}
		k.preference.Legacy = slices.DeleteFunc(slices.Clone(k.preference.Legacy), func(s string) bool { return s == typ })
		k.reconciler.SetPreference(k.preference)
		if k.visible == typ {
			k.visible = k.cfg.Backend.Type
		}
		if err := k.switching.Retire(ctx, typ); err != nil {
			k.log.Warn("switching backend: removing the previous data path", "backend", typ, "err", err)
		}
		k.log.Info("switching backend: no peer needs the previous backend; its data path is removed", "removed", typ)
		k.publish()
	}
	return len(k.switching.Legacy()) == 0
}

// publish writes the lease's attributes for the backends now running, and
// the state file.
func (k *Keeper) publish() {
	k.own.SetAttrs(Attrs(k.base, k.switching.Paths(), k.visible, true))
	k.writeState()
}

func (k *Keeper) writeState() {
	if err := WriteState(k.stateFile, k.RunningState()); err != nil {
		k.log.Warn("writing the switch state file", "path", k.stateFile, "err", err)
	}
}

// RunningState is the state file for this run: the Backend objects it
// runs, the primary first, and the MTU the primary carries.
func (k *Keeper) RunningState() State {
	st := State{Backends: []Spec{k.primary}, CarriedMTU: k.carriedMTU}
	if k.switching != nil {
		for _, typ := range k.switching.Legacy() {
			st.Backends = append(st.Backends, k.specs[typ])
		}
	}
	return st
}

func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
