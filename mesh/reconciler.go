package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/lease"
)

// Applier programs a data path to match a Desired state. Apply must be safe
// to call again with the same state (it changes only what differs), keep
// going past a failing peer, and return every error it met, joined.
type Applier interface {
	Apply(ctx context.Context, d Desired) error
}

// LeaseSource is the lease set as lease.Watcher keeps it from the store's
// watch; tests use the same Watcher over leasetest's store.
type LeaseSource interface {
	// SharedLeases returns every valid lease, as the source's own copies
	// (read only).
	SharedLeases() []*lease.Lease
	// RecordRevision returns the store revision of the record at key,
	// valid or not.
	RecordRevision(key string) (int64, bool)
	// Lease returns the valid lease at key.
	Lease(key string) (lease.Lease, bool)
	// ChangesSince names the keys changed since generation gen; whole means
	// every lease must be looked at again.
	ChangesSince(gen uint64) (keys []string, next uint64, whole bool)
	Synced() bool
	Changed() <-chan struct{}
}

// OwnLease is this host's lease as lease.Holder keeps it.
type OwnLease interface {
	Current() lease.Lease
	Changed() <-chan struct{}
	Verify()
}

// Stats are the reconcile loop's counters, for metrics and status.
type Stats struct {
	Runs, Errors int
	// WholeApplies counts whole applies (start, resync, relist,
	// recovery from an error); Runs minus WholeApplies were deltas.
	WholeApplies int
	LastDuration time.Duration
	LastError    string
	Peers        int
	Skipped      int
}

// DefaultResync is how often a host compares its whole data path with
// what it wants when nothing changed (weftd's -resync-interval).
const DefaultResync = 30 * time.Second

// Reconciler is the reconcile loop: any change only marks the state dirty; one
// goroutine brings the data path to the desired state. A change to a few
// leases is applied as a Delta of those peers alone when the backend is a
// DeltaApplier; the start, every resync tick, a relist of the leases, a
// change of this host's own lease and any failed apply recompute the
// whole state from every lease and have the backend compare it with the
// kernel, which heals drift.
type Reconciler struct {
	Config *lease.Config
	// Preference is which backend each peer is reached by while this host
	// runs more than the config's (a live switch); the zero value outside
	// one. Set it before Run, and change it only inside Pause.
	Preference Preference
	Leases     LeaseSource
	// Admit leaves out leases that are no members of the mesh
	// (lease/membership's enforce mode); nil admits all. A change of
	// what it admits takes a Pause.
	Admit   Admit
	Own     OwnLease
	Backend Applier
	// Resync is how often to re-apply even without a change (0:
	// DefaultResync).
	Resync time.Duration
	Log    *slog.Logger
	// Outside supplies the outside peers (wireguard's PeersNetwork) for
	// whole applies; a change to them triggers one. May be nil.
	Outside OutsideSource
	// OnOwnLeaseChange runs when this host's lease was re-claimed (rewrite
	// the subnet file). May be nil.
	OnOwnLeaseChange func(lease.Lease)
	// OnApplied runs after every successful apply with this host's lease
	// and the number of peers (readiness). May be nil.
	OnApplied func(self lease.Lease, peers int)
	// OnReconcile runs after every apply with its duration and error
	// (metrics). May be nil.
	OnReconcile func(time.Duration, error)
	// OnPeersChanged runs before each apply with the peers that leave the
	// desired state (gone) and those that join it or change (added): what
	// changed, not the whole set, on a delta. May be nil.
	OnPeersChanged func(gone, added []Peer)

	// pause is held by each reconcile pass and by Pause, so what Pause
	// runs never meets a pass half done.
	pause sync.Mutex
	// forceWhole asks the next pass for a whole apply (after a Pause);
	// wake tells the loop there is one to run.
	forceWhole atomic.Bool
	wakeOnce   sync.Once
	wakeCh     chan struct{}

	mu      sync.Mutex // guards stats and model
	stats   Stats
	model   *model // the desired state last handed to the backend
	lastErr string
	// backendSkips are the peers the backend left out (PeerSkipped), by
	// lease key, each logged once.
	backendSkips map[string]string
	gen          uint64 // the lease source's change generation seen
	// needWhole forces a whole apply: nothing applied yet, or the
	// last apply failed and the data path may be anywhere in between.
	needWhole bool
}

// Desired returns the desired state last handed to the backend (empty
// before the first apply), the peers the backend left out among the
// skipped. It copies and sorts every peer: for status, not hot paths.
func (r *Reconciler) Desired() Desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.outlineLocked()
	r.eachPeerLocked(func(p *Peer) { d.Peers = append(d.Peers, *p) })
	d.sort()
	return d
}

// Outline is Desired without its peers (the network, this host's lease
// and the skipped leases, sorted): with EachPeer, what a status page
// needs without a copy of every peer.
func (r *Reconciler) Outline() Desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.outlineLocked()
}

func (r *Reconciler) outlineLocked() Desired {
	if r.model == nil {
		return Desired{}
	}
	d := Desired{Network: r.model.network, IPv6Network: r.model.network6, Self: r.model.self}
	for k, reason := range r.model.skipped {
		d.Skipped = append(d.Skipped, Skipped{Key: k, Reason: reason})
	}
	// Peers the backend left out are skipped too, with its reason.
	for key, reason := range r.backendSkips {
		if _, ok := r.model.peer(key); ok {
			d.Skipped = append(d.Skipped, Skipped{Key: key, Reason: reason})
		}
	}
	d.sort()
	return d
}

// EachPeer calls f with each peer of the desired state last handed to the
// backend, those the backend left out excepted, in no order, and returns
// how many leases are skipped (Desired's Skipped, without building it).
// f must not keep p, nor call the Reconciler.
func (r *Reconciler) EachPeer(f func(p *Peer)) (skipped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.eachPeerLocked(f)
}

func (r *Reconciler) eachPeerLocked(f func(p *Peer)) (skipped int) {
	if r.model == nil {
		return 0
	}
	skipped = len(r.model.skipped)
	r.model.each(func(p *Peer) {
		if _, left := r.backendSkips[p.Key]; left {
			skipped++
			return
		}
		f(p)
	})
	return skipped
}

// Stats returns a copy of the loop's counters.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// OutsideSource is where the outside peers come from (weftd polls
// <prefix>/peers/).
type OutsideSource interface {
	Peers() []lease.OutsidePeer
	Changed() <-chan struct{}
}

// wake is the channel Pause signals the loop on.
func (r *Reconciler) wake() chan struct{} {
	r.wakeOnce.Do(func() { r.wakeCh = make(chan struct{}, 1) })
	return r.wakeCh
}

// Pause runs f while no reconcile pass runs, then has the next pass apply
// the whole state: f may change what the pass reads (the Preference,
// during a live switch) and the backend's data paths.
func (r *Reconciler) Pause(f func()) {
	r.pause.Lock()
	f()
	r.forceWhole.Store(true)
	r.pause.Unlock()
	select {
	case r.wake() <- struct{}{}:
	default:
	}
}

// SetPreference changes the path preference (Preference) for the passes
// that follow; call it inside Pause, which keeps it from a pass under way.
func (r *Reconciler) SetPreference(p Preference) { r.Preference = p }

// Run reconciles until ctx ends. It returns only ctx's error: failures are
// logged and retried on the next change or tick.
func (r *Reconciler) Run(ctx context.Context) error {
	log := r.Log.With("component", "reconcile")
	resync := r.Resync
	if resync <= 0 {
		resync = DefaultResync
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	r.needWhole = true
	first := make(chan struct{}, 1)
	first <- struct{}{}
	var outsideChanged <-chan struct{}
	if r.Outside != nil {
		outsideChanged = r.Outside.Changed()
	}
	for {
		resync, tick := false, false
		select {
		case <-outsideChanged:
			resync = true
		case <-ctx.Done():
			return ctx.Err()
		case <-r.Leases.Changed():
		case <-r.Own.Changed():
			if r.OnOwnLeaseChange != nil {
				r.OnOwnLeaseChange(r.Own.Current())
			}
		case <-ticker.C:
			tick = true
		case <-r.wake():
		case <-first:
		}
		if !r.Leases.Synced() {
			continue
		}
		r.pause.Lock()
		r.reconcile(ctx, log, resync || r.forceWhole.Swap(false), tick)
		r.pause.Unlock()
	}
}

// reconcile applies what changed, or the whole state when resync says so
// (or a delta cannot), or at a tick of the resync interval, which
// compares the whole state with the data path.
func (r *Reconciler) reconcile(ctx context.Context, log *slog.Logger, resync, tick bool) {
	self := r.Own.Current()
	if rev, ok := r.Leases.RecordRevision(self.Key()); !ok || rev != self.Revision {
		// Our lease vanished or was rewritten by someone: let the holder
		// check and claim it back. The data path stays as it is meanwhile.
		r.Own.Verify()
	}
	start := time.Now()
	// Taken before the leases are read: a change landing in between is
	// seen now and named again next time, which is harmless.
	keys, next, wholeSet := r.Leases.ChangesSince(r.gen)
	r.gen = next
	deltas, canDelta := r.Backend.(DeltaApplier)
	// needWhole is set until a whole apply succeeded, so the model exists below.
	whole := resync || tick || wholeSet || r.needWhole || !canDelta || !sameSelf(r.model.self, self)
	var err error
	if !whole {
		err = r.applyDelta(ctx, log, deltas, keys)
		whole = errors.Is(err, ErrWholeApply)
	}
	if whole {
		// A tick with nothing changed since the last pass compares the
		// data path with the model, the last whole apply with every delta
		// since folded in: computing it again from the leases would give
		// the same peers (admission aside, which time alone can change),
		// and a second copy of every peer beside the first was the largest
		// part of a resync's memory.
		again := tick && !resync && !wholeSet && len(keys) == 0 && !r.needWhole && r.Admit == nil &&
			r.model != nil && sameSelf(r.model.self, self)
		if again {
			err = r.applyAgain(ctx)
		} else {
			err = r.applyWhole(ctx, log, self)
		}
	}
	skipped, err := splitSkipped(err)
	r.noteBackendSkips(log, skipped, whole)
	r.needWhole = err != nil
	r.mu.Lock()
	r.stats.Runs++
	if whole {
		r.stats.WholeApplies++
	}
	r.stats.LastDuration = time.Since(start)
	peers := r.model.count()
	r.stats.Peers, r.stats.Skipped = peers, len(r.model.skipped)
	if err != nil {
		r.stats.Errors++
		r.stats.LastError = err.Error()
	} else {
		r.stats.LastError = ""
	}
	r.mu.Unlock()
	if r.OnReconcile != nil {
		r.OnReconcile(time.Since(start), err)
	}
	if err != nil {
		// One line per distinct failure, not one per tick.
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			log.Error("applying desired state; will retry", "err", err)
		}
		return
	}
	if r.lastErr != "" {
		log.Info("desired state applied again after errors", "peers", peers)
		r.lastErr = ""
	}
	if len(keys) > 0 || whole {
		// The time of this line is when the data path holds the change:
		// the benchmarks read it to time a lease's way into the kernel.
		log.Debug("applied", "whole", whole, "peers", peers, "leases_changed", SummarizeKeys(keys), "took", time.Since(start))
	}
	if r.OnApplied != nil {
		r.OnApplied(self, peers)
	}
}

// noteBackendSkips logs each peer the backend skipped once (again only when
// the reason changes), and forgets those no longer skipped after a whole
// apply, which names every skipped peer.
func (r *Reconciler) noteBackendSkips(log *slog.Logger, skipped []*PeerSkipped, whole bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := make(map[string]string, len(skipped))
	for _, s := range skipped {
		now[s.Key] = s.Reason
		if r.backendSkips[s.Key] != s.Reason {
			warnSkipped(log, Skipped{Key: s.Key, Reason: s.Reason})
		}
	}
	if whole || r.backendSkips == nil {
		r.backendSkips = now
		return
	}
	for k, v := range now {
		r.backendSkips[k] = v
	}
}

// applyWhole computes the whole desired state and has the backend apply it.
func (r *Reconciler) applyWhole(ctx context.Context, log *slog.Logger, self lease.Lease) error {
	desired := ComputeShared(self, r.Leases.SharedLeases(), r.Config, r.Preference, r.Admit)
	if r.Outside != nil {
		desired.Outside = r.Outside.Peers()
	}
	var before map[string]string // reasons already logged with the last state
	if r.model != nil {
		before = r.model.skipped
	}
	for _, s := range desired.Skipped {
		if before[s.Key] != s.Reason {
			warnSkipped(log, s)
		}
	}
	m := newModel(desired)
	r.mu.Lock()
	old := r.model
	r.model = m
	r.mu.Unlock()
	if r.OnPeersChanged != nil {
		r.OnPeersChanged(changedPeers(old, m))
	}
	return r.Backend.Apply(ctx, desired)
}

// applyAgain has the backend apply the model whole again (its own peers,
// not a copy).
func (r *Reconciler) applyAgain(ctx context.Context) error {
	r.mu.Lock()
	desired := r.model.desired(r.Config)
	r.mu.Unlock()
	if r.Outside != nil {
		desired.Outside = r.Outside.Peers()
	}
	return r.Backend.Apply(ctx, desired)
}

// applyDelta turns the changed keys into a Delta and applies it. The
// model moves to the new state even when applying fails: needWhole then
// makes the next pass apply the whole state.
func (r *Reconciler) applyDelta(ctx context.Context, log *slog.Logger, backend DeltaApplier, keys []string) error {
	r.mu.Lock()
	delta, skips := r.model.diff(keys, r.Leases.Lease, r.Config, r.Preference, r.Admit)
	r.mu.Unlock()
	for _, s := range skips {
		if s.Reason != "" {
			warnSkipped(log, s)
		}
	}
	if delta.empty() {
		return nil
	}
	if r.OnPeersChanged != nil {
		r.OnPeersChanged(delta.Old, delta.New)
	}
	return backend.ApplyDelta(ctx, delta)
}

// warnSkipped logs a skipped lease; callers log each one once per
// distinct reason, comparing with the model's last reasons.
func warnSkipped(log *slog.Logger, s Skipped) {
	log.Warn("skipping lease", "key", s.Key, "reason", s.Reason)
}

// SummarizeKeys names up to 16 lease keys for a log line, then counts the
// rest: a line about 50,000 leases stays one line.
func SummarizeKeys(keys []string) string {
	return SummarizeFirstKeys(keys[:min(len(keys), SummaryKeys)], len(keys))
}

// SummaryKeys is how many keys a summary names.
const SummaryKeys = 16

// SummarizeFirstKeys is SummarizeKeys of total keys of which the caller
// kept only the first (up to SummaryKeys): a count of many needs no list
// of them all.
func SummarizeFirstKeys(first []string, total int) string {
	if total <= len(first) {
		return strings.Join(first, ",")
	}
	return fmt.Sprintf("%s,… (%d more)", strings.Join(first, ","), total-len(first))
}
