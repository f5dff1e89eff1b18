package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// A live switch of Backend.Type (issue 32). When the network config asks
// for another backend, weftd runs again in process (errSwitch) without
// touching the data path, and this run keeps the backends the host ran
// before ("legacy") beside the new one for the peers that do not speak
// the new one yet: hosts not yet switched, flannel hosts. The lease keeps
// the BackendType those peers read (flannel's hosts read nothing else)
// and names the other backends in WeftAlso. A peer that speaks the new
// backend is prepared there at once (standby) and moved to it once this
// host has published it for switchSettle, so both ends of every pair can
// answer before either sends; a legacy backend no peer needs for
// switchSettle is retired. The same runs at a restart in the middle of a
// switch: the lease says what the peers were told, a state file beside
// the subnet file the legacy backends' options.

// errSwitch ends a run whose network config now asks for another backend
// (or other options); main runs again at once.
var errSwitch = errors.New("the network config's backend changed")

// switchSettle is how long a host publishes a backend before it sends
// over it, and how long a legacy backend must go unused before it goes:
// long enough for every peer's watch to have seen the change (milliseconds
// on a healthy etcd).
const switchSettle = 2 * time.Second

// coexists reports whether a backend can run beside others during a
// switch: its routes are per peer (host-gw, vxlan), or it routes the
// Network through its own device (wireguard), or it can route its peers
// one by one beside one that does (udp). ipip shares the tunnel filter's
// table with vxlan, and alloc and extension route nothing of their own:
// switching to or from them takes the old data path down at once, as a
// restart did.
func coexists(typ string) bool {
	return typ == backends.VXLAN || typ == backends.HostGW || typ == backends.WireGuard || typ == backends.UDP
}

// backendSpec is a backend as the config names it: its Type and the whole
// Backend object.
type backendSpec struct {
	Type string
	Raw  json.RawMessage
}

// switchStateFile is where a host keeps what a switch must remember and
// no one else should read (switchState).
func switchStateFile(subnetFile string) string {
	return filepath.Join(filepath.Dir(subnetFile), "weft-backends.json")
}

// switchState is the state file's content.
type switchState struct {
	// Backends are the Backend objects the host runs, primary first: a
	// legacy backend's options (a VNI, a port, a PSK) are not in the
	// config any more and are not the peers' to read in the lease.
	Backends []backendSpec
	// CarriedMTU is the MTU the primary backend's device carries for
	// containers started under a previous backend with a larger one
	// (wireguard.Backend.CarryMTU); 0 for none. Docker keeps its
	// containers' MTU until it restarts, which weftd cannot see, so it is
	// kept for as long as the primary backend stays.
	CarriedMTU int `json:",omitempty"`
}

func readSwitchState(path string) switchState {
	var st switchState
	data, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(data, &st) != nil {
		st = switchState{}
	}
	return st
}

func writeSwitchState(path string, st switchState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// switchPlan is what this run keeps from before: the legacy backends,
// which backend the lease shows as its BackendType, and the MTU the new
// backend's device carries for containers started before.
type switchPlan struct {
	legacy     []backendSpec
	visible    string
	carriedMTU int
	// previous is this host's lease before this run (nil: none), whose
	// data a backend may keep (vxlan's VTEP MAC across an address change).
	previous *lease.Attrs
}

// planSwitch reads this host's previous lease (the subnet file's, if it
// is still this host's) and keeps, beside cfg's backend, the other
// backends it published that can run beside it.
func planSwitch(ctx context.Context, store lease.Store, o *options, cfg *lease.Config, self lease.Attrs, log *slog.Logger) switchPlan {
	plan := switchPlan{visible: cfg.Backend.Type}
	saved := readSwitchState(switchStateFile(o.subnetFile))
	if len(saved.Backends) > 0 && saved.Backends[0].Type == cfg.Backend.Type {
		plan.carriedMTU = saved.CarriedMTU
	}
	prev, ok := previousLease(ctx, store, o, cfg, self)
	if ok {
		plan.previous = &prev.Attrs
	}
	if !ok || !coexists(cfg.Backend.Type) {
		return plan
	}
	for i, p := range prev.Attrs.Paths() {
		typ := p.BackendType
		if typ == cfg.Backend.Type || !coexists(typ) {
			continue
		}
		spec := backendSpec{Type: typ, Raw: json.RawMessage(fmt.Sprintf(`{"Type":%q}`, typ))}
		if j := slices.IndexFunc(saved.Backends, func(s backendSpec) bool { return s.Type == typ }); j >= 0 {
			spec = saved.Backends[j]
		}
		plan.legacy = append(plan.legacy, spec)
		if i == 0 {
			plan.visible = typ
		}
	}
	if len(plan.legacy) > 0 {
		// Containers started under the legacy backend keep the MTU the
		// subnet file gave them until docker restarts.
		if env, err := lease.ReadSubnetFile(o.subnetFile); err == nil {
			plan.carriedMTU = max(plan.carriedMTU, env.MTU)
		}
		log.Info("switching backend: keeping the previous one for peers that have not switched", "backend", cfg.Backend.Type,
			"keeping", plan.legacyTypes(), "lease_shows", plan.visible)
	}
	return plan
}

// previousLease is this host's lease before this run: the subnet file's,
// when it still names this host (self: its host ID, or else its PublicIP).
func previousLease(ctx context.Context, store lease.Store, o *options, cfg *lease.Config, self lease.Attrs) (lease.Lease, bool) {
	env, err := lease.ReadSubnetFile(o.subnetFile)
	if err != nil || !env.Subnet.IsValid() {
		return lease.Lease{}, false
	}
	key := lease.DualSubnetKey(env.Subnet, env.IPv6Subnet)
	rec, ok, err := store.Get(ctx, key)
	if err != nil || !ok {
		return lease.Lease{}, false
	}
	l, err := lease.DecodeLease(rec.Key, rec.Value)
	if err != nil || (cfg.EnableIPv4 || !l.Attrs.HostID.IsZero()) && !l.Attrs.SameHost(self) {
		return lease.Lease{}, false
	}
	return l, true
}

func (p switchPlan) legacyTypes() []string {
	out := make([]string, 0, len(p.legacy))
	for _, s := range p.legacy {
		out = append(out, s.Type)
	}
	return out
}

// newLegacy builds the legacy backends of plan, each with its own options
// on cfg's network, or takes them running from the previous run (ready).
func newLegacy(env backends.Env, plan switchPlan, ready map[string]bool) (map[string]backends.Backend, error) {
	out := map[string]backends.Backend{}
	for _, spec := range plan.legacy {
		cfg := *env.Config
		cfg.Backend = lease.BackendConfig{Type: spec.Type, Raw: spec.Raw}
		// Strict encryption and outside peers are the config's backend's.
		cfg.StrictEncryption, cfg.PeersNetwork = false, netip.Prefix{}
		if err := errors.Join(backends.CheckConfig(&cfg), backends.ValidateOptions(&cfg)); err != nil {
			return nil, fmt.Errorf("the previous backend %s: %w", spec.Type, err)
		}
		if b, ok := takeCarried(spec); ok {
			out[spec.Type] = b
			ready[spec.Type] = true
			continue
		}
		e := env
		e.Config = &cfg
		b, err := backends.New(e)
		if err != nil {
			return nil, fmt.Errorf("the previous backend %s: %w", spec.Type, err)
		}
		out[spec.Type] = b
	}
	return out, nil
}

// switchAttrs are the lease's attributes during a switch: base's
// addresses, the visible backend's type and data (what flannel's hosts
// read), and the other backends in WeftAlso; the primary only once
// published (it is named once it can answer).
func switchAttrs(base lease.Attrs, paths []lease.PathAttrs, visible string, withPrimary bool) lease.Attrs {
	a := lease.Attrs{PublicIP: base.PublicIP, PublicIPv6: base.PublicIPv6}
	for i, p := range paths {
		if i == 0 && !withPrimary && p.BackendType != visible {
			continue
		}
		if a.PublicIPv6 == nil {
			p.BackendV6Data = nil
		}
		if p.BackendType == visible {
			kind, _ := backends.Lookup(p.BackendType)
			a.BackendType = lease.BackendConfig{Type: p.BackendType, Untyped: kind.Untyped}.LeaseType()
			a.BackendData = p.BackendData
			a = a.WithBackendV6Data(p.BackendV6Data)
			continue
		}
		a = a.WithAlso(append(a.Also(), p))
	}
	return a
}

// switchKeeper moves this host through a switch: it publishes the new
// backend once the first apply prepared its peers, moves the peers that
// speak it there after switchSettle, and retires each legacy backend no
// peer has needed for switchSettle, until the lease is the new backend's
// alone, byte for byte as flannel writes it.
type switchKeeper struct {
	cfg        *lease.Config
	backend    *backends.Switching
	reconciler *mesh.Reconciler
	watcher    *lease.Watcher
	holder     *lease.Holder
	base       lease.Attrs
	visible    string
	state      string // the state file
	primary    backendSpec
	specs      map[string]backendSpec
	// carriedMTU is the primary's carried MTU, when it carries one.
	carriedMTU int
	log        *slog.Logger

	applied  chan struct{}
	once     sync.Once
	unneeded map[string]time.Time
}

// firstApplied is the reconciler's signal that the standby peers are
// prepared (OnApplied).
func (k *switchKeeper) firstApplied() {
	if k.applied != nil {
		k.once.Do(func() { close(k.applied) })
	}
}

// Run keeps the switch going until it is done or ctx ends.
func (k *switchKeeper) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-k.applied:
	}
	k.publish(true)
	k.log.Info("switching backend: published; moving peers that speak it after the settle time", "backend", k.cfg.Backend.Type, "settle", switchSettle)
	if !sleepCtx(ctx, switchSettle) {
		return ctx.Err()
	}
	k.reconciler.Pause(func() { k.cfg.LegacyFirst = false })
	k.unneeded = map[string]time.Time{}
	for {
		if !sleepCtx(ctx, time.Second) {
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
// switchSettle (the reconciler paused); it says whether none is left.
func (k *switchKeeper) retireUnneeded(ctx context.Context) bool {
	needed := map[string]bool{}
	self := k.holder.Current()
	for _, l := range k.watcher.Leases() {
		if l.Subnet == self.Subnet && l.IPv6Subnet == self.IPv6Subnet {
			continue
		}
		if mesh.Check(l, k.cfg) != "" {
			continue
		}
		if p, ok := mesh.Path(l, k.cfg); ok {
			needed[mesh.PathType(p, k.cfg)] = true
		}
	}
	now := time.Now()
	for _, typ := range k.backend.Legacy() {
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
		} else if now.Sub(since) < 2*switchSettle+time.Second {
			continue
		}
		k.cfg.Speaks = slices.DeleteFunc(slices.Clone(k.cfg.Speaks), func(s string) bool { return s == typ })
		if k.visible == typ {
			k.visible = k.cfg.Backend.Type
		}
		if err := k.backend.Retire(ctx, typ); err != nil {
			k.log.Warn("switching backend: removing the previous data path", "backend", typ, "err", err)
		}
		k.log.Info("switching backend: no peer needs the previous backend; its data path is removed", "removed", typ)
		k.publish(true)
	}
	return len(k.backend.Legacy()) == 0
}

// publish writes the lease's attributes for the backends now running, and
// the state file.
func (k *switchKeeper) publish(withPrimary bool) {
	k.holder.SetAttrs(switchAttrs(k.base, k.backend.Paths(), k.visible, withPrimary))
	if err := writeSwitchState(k.state, k.runningState()); err != nil {
		k.log.Warn("writing the switch state file", "path", k.state, "err", err)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// init makes k the keeper of a run that switches (its backend is a
// backends.Switching), or an idle one.
func (k *switchKeeper) init(o *options, cfg *lease.Config, backend backends.Backend, plan switchPlan, r *mesh.Reconciler, w *lease.Watcher,
	h *lease.Holder, base lease.Attrs, log *slog.Logger) {
	k.cfg, k.reconciler, k.watcher, k.holder, k.base, k.visible = cfg, r, w, h, base, plan.visible
	k.state, k.primary = switchStateFile(o.subnetFile), backendSpec{Type: cfg.Backend.Type, Raw: cfg.Backend.Raw}
	k.specs, k.log, k.applied = map[string]backendSpec{}, log.With("component", "switch"), make(chan struct{})
	for _, s := range plan.legacy {
		k.specs[s.Type] = s
	}
	if c, ok := backends.CarriedMTU(backend); ok {
		k.carriedMTU = c
	}
	k.backend, _ = backend.(*backends.Switching)
	if k.backend == nil {
		// Not switching: the state file names the backend this run has,
		// for the switch that may come.
		if err := writeSwitchState(k.state, k.runningState()); err != nil {
			k.log.Warn("writing the switch state file", "path", k.state, "err", err)
		}
	}
}

// carried are the backends a run hands to the next at a live switch, by
// Type, with the Backend object each was built from: the next run reuses
// one it asks for again, unchanged, so its device keeps running
// (wireguard-go and its sessions are not restarted, which would drop
// packets for a round trip). Runs are sequential; main's loop owns it.
var carried = map[string]carriedBackend{}

type carriedBackend struct {
	raw string
	b   backends.Backend
}

// handOver keeps a run's backends for the next run (carried) instead of
// closing them.
func handOver(backend backends.Backend, specs []backendSpec) {
	parts := map[string]backends.Backend{}
	if s, ok := backend.(*backends.Switching); ok {
		parts = s.Backends()
	} else if len(specs) > 0 {
		parts[specs[0].Type] = backend
	}
	for _, spec := range specs {
		if b, ok := parts[spec.Type]; ok {
			carried[spec.Type] = carriedBackend{raw: compactJSON(spec.Raw), b: b}
		}
	}
}

// takeCarried is the running backend of spec handed over by the previous
// run, if it is built as spec asks.
func takeCarried(spec backendSpec) (backends.Backend, bool) {
	c, ok := carried[spec.Type]
	if !ok || c.raw != compactJSON(spec.Raw) {
		return nil, false
	}
	delete(carried, spec.Type)
	return c.b, true
}

// closeCarried closes what the previous run handed over and this one did
// not take (a backend it runs no more, or with other options).
func closeCarried() {
	for typ, c := range carried {
		c.b.Close()
		delete(carried, typ)
	}
}

// runningState is the state file for this run: the Backend objects it
// runs, the primary first, and the MTU the primary carries.
func (k *switchKeeper) runningState() switchState {
	st := switchState{Backends: []backendSpec{k.primary}, CarriedMTU: k.carriedMTU}
	if k.backend != nil {
		for _, typ := range k.backend.Legacy() {
			st.Backends = append(st.Backends, k.specs[typ])
		}
	}
	return st
}

// switching is sw when the run ends for a live switch (err is errSwitch),
// else nil.
func switching(err error, sw *switchKeeper) *switchKeeper {
	if errors.Is(err, errSwitch) {
		return sw
	}
	return nil
}
