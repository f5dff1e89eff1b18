package mesh

import (
	"context"
	"log/slog"
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
	LastDuration time.Duration
	LastError    string
	Peers        int
	Skipped      int
}

// Node is the reconcile loop: any change only marks the state dirty; one
// goroutine recomputes the desired state from the whole lease set and has
// the backend apply the difference; a resync timer heals drift.
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
	// OnApplied runs after every successful apply (readiness). May be nil.
	OnApplied func(Desired)
	// OnReconcile runs after every apply with its duration and error
	// (metrics). May be nil.
	OnReconcile func(time.Duration, error)

	mu      sync.Mutex
	stats   Stats
	warned  map[string]string // lease key → reason already logged
	lastErr string
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
	n.warned = map[string]string{}
	resync := n.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	dirty := make(chan struct{}, 1)
	dirty <- struct{}{}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.Leases.Changed():
		case <-n.Own.Changed():
			if n.OnOwnLeaseChange != nil {
				n.OnOwnLeaseChange(n.Own.Current())
			}
		case <-ticker.C:
		case <-dirty:
		}
		if !n.Leases.Synced() {
			continue
		}
		n.reconcile(ctx, log)
	}
}

func (n *Node) reconcile(ctx context.Context, log *slog.Logger) {
	self := n.Own.Current()
	if rec, ok := n.Leases.Lookup(self.Key()); !ok || rec.Revision != self.Revision {
		// Our lease vanished or was rewritten by someone: let the holder
		// check and claim it back. The data path stays as it is meanwhile.
		n.Own.Verify()
	}
	start := time.Now()
	desired := Compute(self, n.Leases.Leases(), n.Config)
	n.warnSkipped(log, desired.Skipped)
	err := n.Backend.Apply(ctx, desired)
	n.mu.Lock()
	n.stats.Runs++
	n.stats.LastDuration = time.Since(start)
	n.stats.Peers, n.stats.Skipped = len(desired.Peers), len(desired.Skipped)
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
		log.Info("desired state applied again after errors", "peers", len(desired.Peers))
		n.lastErr = ""
	}
	if n.OnApplied != nil {
		n.OnApplied(desired)
	}
}

// warnSkipped logs each skipped lease once per distinct reason.
func (n *Node) warnSkipped(log *slog.Logger, skipped []Skipped) {
	now := make(map[string]string, len(skipped))
	for _, s := range skipped {
		now[s.Key] = s.Reason
		if n.warned[s.Key] != s.Reason {
			log.Warn("skipping lease", "key", s.Key, "reason", s.Reason)
		}
	}
	n.warned = now
}
