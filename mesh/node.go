package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/lease"
)

// Applier programs a data path to match a Desired state. Apply must be safe
// to call again with the same state (it changes only what differs), keep
// going past a failing peer, and return every error it met, joined.
type Applier interface {
	Apply(ctx context.Context, d Desired) error
}

// LeaseSource is the lease set as the Watcher keeps it.
type LeaseSource interface {
	Leases() []lease.Lease
	Lookup(key string) (lease.Record, bool)
	// Lease returns the valid lease at key.
	Lease(key string) (lease.Lease, bool)
	// ChangesSince names the keys changed since generation gen; full means
	// every lease must be looked at again.
	ChangesSince(gen uint64) (keys []string, next uint64, full bool)
	Synced() bool
	Changed() <-chan struct{}
}

// OwnLease is this host's lease as the Holder keeps it.
type OwnLease interface {
	Current() lease.Lease
	Changed() <-chan struct{}
	Verify()
}

// Stats are the reconcile loop's counters, for metrics and status.
type Stats struct {
	Runs, Errors int
	// FullApplies counts whole-state applies (start, resync, relist,
	// recovery from an error); Runs minus FullApplies were deltas.
	FullApplies  int
	LastDuration time.Duration
	LastError    string
	Peers        int
	Skipped      int
}

// Node is the reconcile loop: any change only marks the state dirty; one
// goroutine brings the data path to the desired state. A change to a few
// leases is applied as a Delta of those peers alone when the backend is a
// DeltaApplier; the start, every resync tick, a relist of the leases, a
// change of this host's own lease and any failed apply recompute the
// whole state from every lease and have the backend compare it with the
// kernel, which heals drift.
type Node struct {
	Config  *lease.Config
	Leases  LeaseSource
	Own     OwnLease
	Backend Applier
	// Resync is how often to re-apply even without a change.
	Resync time.Duration
	Log    *slog.Logger
	// OnOwnLeaseChange runs when this host's lease was re-claimed (rewrite
	// the subnet file). May be nil.
	OnOwnLeaseChange func(lease.Lease)
	// OnApplied runs after every successful apply with this host's lease
	// and the number of peers (readiness). May be nil.
	OnApplied func(self lease.Lease, peers int)
	// OnReconcile runs after every apply with its duration and error
	// (metrics). May be nil.
	OnReconcile func(time.Duration, error)

	mu      sync.Mutex // guards stats and model
	stats   Stats
	model   *model // the desired state last handed to the backend
	lastErr string
	gen     uint64 // the lease source's change generation seen
	// needFull forces a whole-state apply: nothing applied yet, or the
	// last apply failed and the data path may be anywhere in between.
	needFull bool
}

// Desired returns the desired state last handed to the backend (empty
// before the first apply). It sorts every peer: for status, not hot paths.
func (n *Node) Desired() Desired {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.model == nil {
		return Desired{}
	}
	return n.model.desired()
}

// Stats returns a copy of the loop's counters.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stats
}

// Run reconciles until ctx ends. It returns only ctx's error: failures are
// logged and retried on the next change or tick.
func (n *Node) Run(ctx context.Context) error {
	log := n.Log.With("component", "reconcile")
	resync := n.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	n.needFull = true
	first := make(chan struct{}, 1)
	first <- struct{}{}
	for {
		resync := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.Leases.Changed():
		case <-n.Own.Changed():
			if n.OnOwnLeaseChange != nil {
				n.OnOwnLeaseChange(n.Own.Current())
			}
		case <-ticker.C:
			resync = true
		case <-first:
		}
		if !n.Leases.Synced() {
			continue
		}
		n.reconcile(ctx, log, resync)
	}
}

func (n *Node) reconcile(ctx context.Context, log *slog.Logger, resync bool) {
	self := n.Own.Current()
	if rec, ok := n.Leases.Lookup(self.Key()); !ok || rec.Revision != self.Revision {
		// Our lease vanished or was rewritten by someone: let the holder
		// check and claim it back. The data path stays as it is meanwhile.
		n.Own.Verify()
	}
	start := time.Now()
	// Taken before the leases are read: a change landing in between is
	// seen now and named again next time, which is harmless.
	keys, next, relisted := n.Leases.ChangesSince(n.gen)
	n.gen = next
	deltas, canDelta := n.Backend.(DeltaApplier)
	// needFull is set until a whole apply succeeded, so the model exists below.
	full := resync || relisted || n.needFull || !canDelta || !sameSelf(n.model.self, self)
	var err error
	if !full {
		err = n.applyDelta(ctx, log, deltas, keys)
		full = errors.Is(err, ErrFullApply)
	}
	if full {
		err = n.applyAll(ctx, log, self)
	}
	n.needFull = err != nil
	n.mu.Lock()
	n.stats.Runs++
	if full {
		n.stats.FullApplies++
	}
	n.stats.LastDuration = time.Since(start)
	peers := len(n.model.peers)
	n.stats.Peers, n.stats.Skipped = peers, len(n.model.skipped)
	if err != nil {
		n.stats.Errors++
		n.stats.LastError = err.Error()
	} else {
		n.stats.LastError = ""
	}
	n.mu.Unlock()
	if n.OnReconcile != nil {
		n.OnReconcile(time.Since(start), err)
	}
	if err != nil {
		// One line per distinct failure, not one per tick.
		if msg := err.Error(); msg != n.lastErr {
			n.lastErr = msg
			log.Error("applying desired state; will retry", "err", err)
		}
		return
	}
	if n.lastErr != "" {
		log.Info("desired state applied again after errors", "peers", peers)
		n.lastErr = ""
	}
	if len(keys) > 0 || full {
		// The time of this line is when the data path holds the change:
		// the benchmarks read it to time a lease's way into the kernel.
		log.Debug("applied", "whole", full, "peers", peers, "leases_changed", summarize(keys), "took", time.Since(start))
	}
	if n.OnApplied != nil {
		n.OnApplied(self, peers)
	}
}

// applyAll computes the whole desired state and has the backend apply it.
func (n *Node) applyAll(ctx context.Context, log *slog.Logger, self lease.Lease) error {
	desired := Compute(self, n.Leases.Leases(), n.Config)
	var before map[string]string // reasons already logged with the last state
	if n.model != nil {
		before = n.model.skipped
	}
	for _, s := range desired.Skipped {
		if before[s.Key] != s.Reason {
			warnSkipped(log, s)
		}
	}
	m := newModel(desired)
	n.mu.Lock()
	n.model = m
	n.mu.Unlock()
	return n.Backend.Apply(ctx, desired)
}

// applyDelta turns the changed keys into a Delta and applies it. The
// model moves to the new state even when applying fails: needFull then
// makes the next pass apply the whole state.
func (n *Node) applyDelta(ctx context.Context, log *slog.Logger, backend DeltaApplier, keys []string) error {
	n.mu.Lock()
	delta, skips := n.model.diff(keys, n.Leases.Lease, n.Config)
	n.mu.Unlock()
	for _, s := range skips {
		if s.Reason != "" {
			warnSkipped(log, s)
		}
	}
	if delta.empty() {
		return nil
	}
	return backend.ApplyDelta(ctx, delta)
}

// warnSkipped logs a skipped lease; callers log each one once per
// distinct reason, comparing with the model's last reasons.
func warnSkipped(log *slog.Logger, s Skipped) {
	log.Warn("skipping lease", "key", s.Key, "reason", s.Reason)
}

// summarize names up to 16 changed keys for a log line, then counts the rest.
func summarize(keys []string) string {
	const show = 16
	if len(keys) <= show {
		return strings.Join(keys, ",")
	}
	return fmt.Sprintf("%s,… (%d more)", strings.Join(keys[:show], ","), len(keys)-show)
}
