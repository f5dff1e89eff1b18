package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/weftnet/weft/keys"
)

// Watcher keeps an up-to-date copy of every valid lease in the store: it
// lists, then watches from the listed revision, and lists again after a
// compaction or a broken watch, backing off while the store is away. Bad
// records are skipped with one warning per key and revision.
//
// Consumers are level-triggered: Changed fires (coalesced) after every
// update and Leases returns the whole current set; ChangesSince names the
// keys that changed, so a consumer can handle a change without a pass over
// every lease.
type Watcher struct {
	store   Store
	log     *slog.Logger
	changed chan struct{}

	mu sync.Mutex
	// leases are the valid records, decoded; invalid are the others'
	// revisions. No raw value is kept: at 50,000 leases the values, and
	// the etcd response buffers they point into, were a third of weftd's
	// heap.
	// A lease is never changed in place (a change replaces the pointer),
	// so SharedLeases hands out the pointers themselves.
	leases  map[string]*Lease
	invalid map[string]int64
	synced  bool
	warned  map[string]int64 // key → revision already warned about
	relists int
	lastRev int64 // highest revision seen, to notice a store that went back
	// probe is the last change seen (or, after a list, the newest
	// record): the store must still show it at lastRev, or its history
	// is not the one watched.
	probe   probe
	changes changeLog
	// ghosts are leases missing from a list made after the store was away
	// (down, wiped, restored), kept until their deadline: a host re-claims
	// its lease within moments, and dropping it meanwhile would tear down
	// a working data path only to build it again.
	ghosts map[string]time.Time
	// newest is, by identity, when the newest value signed by it that
	// this watcher took was signed: an older one is a replay. Kept across
	// lists.
	newest map[keys.IdentityKey]int64

	// CheckInterval is how often the watch verifies the store is the one
	// it listed (its revision did not go back) and is reachable.
	CheckInterval time.Duration
}

// probe is a key's state at a revision, as the watch saw it.
type probe struct {
	key     string
	rev     int64 // the revision that last changed key
	present bool  // false: deleted
}

// errRewound means the store's revision went backwards: etcd was wiped or
// restored from a backup, and the watch would wait for revisions that
// will never come.
var errRewound = errors.New("store revision went back")

// errReconnected means the store was unreachable for a while and answers
// again: what it holds now is listed afresh, since an etcd restored from a
// snapshot meanwhile can have caught up past the old revision.
var errReconnected = errors.New("store reachable again")

// NewWatcher returns a Watcher over store; call Run to start it.
func NewWatcher(store Store, log *slog.Logger) *Watcher {
	return &Watcher{
		store:   store,
		log:     log.With("component", "lease-watch"),
		changed: make(chan struct{}, 1),
		leases:  map[string]*Lease{},
		invalid: map[string]int64{},
		warned:  map[string]int64{},
		ghosts:  map[string]time.Time{},
		newest:  map[keys.IdentityKey]int64{},

		CheckInterval: 10 * time.Second,
	}
}

// Changed receives a value after the lease set changed; bursts coalesce.
func (w *Watcher) Changed() <-chan struct{} { return w.changed }

// Synced reports whether at least one full listing has been loaded.
func (w *Watcher) Synced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// Relists counts how many times the watch had to start over (metrics).
func (w *Watcher) Relists() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.relists
}

// Leases returns the valid leases, sorted by subnet.
func (w *Watcher) Leases() []Lease {
	w.mu.Lock()
	out := make([]Lease, 0, len(w.leases))
	for _, l := range w.leases {
		out = append(out, *l)
	}
	w.mu.Unlock()
	// By prefix, not by Key(): that formats two strings per comparison,
	// a million at 50,000 leases.
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Subnet.Addr().Compare(out[j].Subnet.Addr()); c != 0 {
			return c < 0
		}
		return out[i].IPv6Subnet.Addr().Less(out[j].IPv6Subnet.Addr())
	})
	return out
}

// SharedLeases returns the valid leases, in no order, as the Watcher's
// own copies: read them, never change them. A whole apply at 50,000
// leases reads every one, and a copy of each was 15 MB at its peak.
func (w *Watcher) SharedLeases() []*Lease {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]*Lease, 0, len(w.leases))
	for _, l := range w.leases {
		out = append(out, l)
	}
	return out
}

// Lease returns the valid lease at key, if there is one.
func (w *Watcher) Lease(key string) (Lease, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if l, ok := w.leases[key]; ok {
		return *l, true
	}
	return Lease{}, false
}

// ChangesSince returns the keys whose lease changed (written, deleted, or
// turned invalid) since generation gen, and the generation to ask from
// next time. whole means the set was replaced as a whole (a relist) or gen
// is too old: the caller must look at every lease again. Start from 0.
func (w *Watcher) ChangesSince(gen uint64) (keys []string, next uint64, whole bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes.since(gen)
}

// RecordRevision returns the store revision of the record at key, valid
// or not (Lease returns only a lease that decodes). A ghost (a lease kept
// while its host re-claims it after the store was away) is not in the
// store: its own host must see it missing and claim it again.
func (w *Watcher) RecordRevision(key string) (int64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ghost := w.ghosts[key]; ghost {
		return 0, false
	}
	if l, ok := w.leases[key]; ok {
		return l.Revision, true
	}
	rev, ok := w.invalid[key]
	return rev, ok
}

// listed reports whether the store holds a record at key, valid or not.
func (w *Watcher) listed(key string) bool {
	_, valid := w.leases[key]
	_, invalid := w.invalid[key]
	return valid || invalid
}

// Run lists and watches until ctx ends; it only returns ctx's error.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := NewBackoff(500*time.Millisecond, 30*time.Second)
	keep := false // the first list has nothing to keep
	for {
		rev, err := w.relist(ctx, keep)
		keep = true
		if err == nil {
			err = w.follow(ctx, rev)
			if ctx.Err() == nil && (errors.Is(err, ErrCompacted) || errors.Is(err, errRewound) || errors.Is(err, errReconnected)) {
				// Compaction is routine (and a rewind was logged): list
				// again at once, without alarm.
				if errors.Is(err, ErrCompacted) {
					w.log.Info("watch fell behind a compaction; listing leases again")
				}
				keep = !errors.Is(err, ErrCompacted)
				backoff.Reset()
				continue
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		delay := backoff.Next()
		w.log.Warn("lease store unavailable; retrying", "err", err, "retry_in", delay.Round(time.Millisecond))
		if !sleep(ctx, delay) {
			return ctx.Err()
		}
	}
}

// relist reads every record afresh. With keep (a list after the store was
// away), leases the store no longer has stay as ghosts for two check
// intervals.
func (w *Watcher) relist(ctx context.Context, keep bool) (int64, error) {
	records, rev, err := w.store.List(ctx)
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	oldLeases := w.leases
	w.leases = make(map[string]*Lease, len(records))
	w.invalid = map[string]int64{}
	w.probe = probe{}
	for i, r := range records {
		w.putLocked(r)
		if r.Revision > w.probe.rev {
			w.probe = probe{key: r.Key, rev: r.Revision, present: true}
		}
		records[i] = Record{} // let the value go now, not after the whole list
	}
	for key := range w.ghosts {
		if w.listed(key) || !keep {
			delete(w.ghosts, key)
		}
	}
	if keep {
		deadline := time.Now().Add(2 * w.CheckInterval)
		for key, l := range oldLeases {
			if w.listed(key) {
				continue
			}
			w.leases[key] = l
			if _, ghost := w.ghosts[key]; !ghost {
				w.ghosts[key] = deadline
			}
		}
	}
	w.synced = true
	w.relists++
	w.changes.reset()
	w.lastRev = rev
	w.mu.Unlock()
	w.notify()
	return rev, nil
}

// follow applies watch events until the watch ends, returning why. It
// also checks the store every CheckInterval: an unreachable store is
// logged once (the watch resumes by itself), a rewound one is re-listed.
func (w *Watcher) follow(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := w.store.Watch(ctx, rev)
	check := time.NewTicker(w.CheckInterval)
	defer check.Stop()
	unreachable := false
	for {
		var resp WatchResponse
		var ok bool
		select {
		case resp, ok = <-events:
			if !ok {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return errors.New("watch closed by the store")
			}
		case <-check.C:
			// Bounded: the etcd client would otherwise wait for a
			// connection as long as the outage lasts.
			checkCtx, cancelCheck := context.WithTimeout(ctx, 3*time.Second)
			cur, err := w.store.Revision(checkCtx)
			cancelCheck()
			switch {
			case err != nil && !unreachable:
				unreachable = true
				w.log.Warn("lease store unreachable; the data path stays as it is until it is back", "err", err)
			case err == nil && unreachable:
				// The store may have been restored from a backup
				// meanwhile, its revision caught up past ours by now
				// (the watch would then skip everything up to our old
				// revision): list it again.
				w.log.Info("lease store reachable again; listing leases again")
				return errReconnected
			}
			w.mu.Lock()
			last, p := w.lastRev, w.probe
			w.mu.Unlock()
			if err == nil && cur < last {
				w.log.Warn("lease store's revision went back (etcd wiped or restored); listing leases again", "was", last, "now", cur)
				return errRewound
			}
			if err == nil {
				if err := w.checkHistory(ctx, p, last); err != nil {
					return err
				}
				w.dropGhosts(time.Now())
			}
			continue
		}
		if resp.Err != nil {
			return resp.Err
		}
		w.mu.Lock()
		for _, ev := range resp.Events {
			w.lastRev = max(w.lastRev, ev.Record.Revision)
			w.probe = probe{key: ev.Record.Key, rev: ev.Record.Revision, present: !ev.Deleted}
			delete(w.ghosts, ev.Record.Key)
			w.changes.add(ev.Record.Key)
			if ev.Deleted {
				delete(w.invalid, ev.Record.Key)
				delete(w.leases, ev.Record.Key)
				delete(w.warned, ev.Record.Key)
				continue
			}
			w.putLocked(ev.Record)
		}
		w.mu.Unlock()
		w.notify()
	}
}

// dropGhosts removes the ghost leases whose deadline passed: their hosts
// did not come back.
func (w *Watcher) dropGhosts(now time.Time) {
	w.mu.Lock()
	dropped := false
	for key, deadline := range w.ghosts {
		if now.Before(deadline) {
			continue
		}
		delete(w.ghosts, key)
		delete(w.leases, key)
		w.changes.add(key)
		dropped = true
		w.log.Info("lease not back after the store returned; dropping it", "key", key)
	}
	w.mu.Unlock()
	if dropped {
		w.notify()
	}
}

// checkHistory reads the last change the watch saw as the store has it at
// that revision. An etcd restored from an older snapshot and written to
// since can have caught up past the watched revision; its history then
// differs (the key missing, or changed at another revision), and the
// watch, resumed from the old revision, would skip everything before it.
func (w *Watcher) checkHistory(ctx context.Context, p probe, at int64) error {
	if p.key == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	r, ok, err := w.store.GetAt(ctx, p.key, at)
	switch {
	case errors.Is(err, ErrFutureRevision):
		w.log.Warn("lease store's revision went back (etcd wiped or restored); listing leases again", "was", at)
		return errRewound
	case errors.Is(err, ErrCompacted):
		// Quiet for a while and compacted since: nothing to compare
		// with, so list again (once per compaction at most).
		w.log.Debug("the watched revision was compacted; listing leases again", "revision", at)
		return errReconnected
	case err != nil:
		return nil // unreachable: said by the revision check
	case ok != p.present || ok && r.Revision != p.rev:
		w.log.Warn("lease store's history is not the one watched (etcd restored from a backup?); listing leases again",
			"key", p.key, "revision", at)
		return errRewound
	}
	return nil
}

func (w *Watcher) putLocked(r Record) {
	l, err := DecodeLease(r.Key, r.Value)
	if err == nil && l.Signed {
		err = w.checkSignedLocked(l, time.Now())
		if cur := w.leases[r.Key]; errors.Is(err, errReplayed) && cur != nil && cur.Signed && cur.Attrs.Identity == l.Attrs.Identity {
			// An older value of the lease this key holds, written again
			// by someone else: the newer one stays (its host takes its
			// lease back meanwhile).
			if w.warned[r.Key] != r.Revision {
				w.warned[r.Key] = r.Revision
				w.log.Warn("refusing an older signed value of a lease (a replay?); keeping the newer", "key", r.Key, "err", err)
			}
			return
		}
	}
	if err != nil {
		delete(w.leases, r.Key)
		w.invalid[r.Key] = r.Revision
		if w.warned[r.Key] != r.Revision {
			w.warned[r.Key] = r.Revision
			w.log.Warn("skipping lease that does not decode", "key", r.Key, "err", err)
		}
		return
	}
	l.Revision, l.CreateRevision, l.StoreLeaseID = r.Revision, r.CreateRevision, r.StoreLeaseID
	delete(w.invalid, r.Key)
	w.leases[r.Key] = &l
	if l.Signed {
		w.newest[l.Attrs.Identity] = max(w.newest[l.Attrs.Identity], l.Attrs.SignedAt)
	}
}

// errReplayed is a signed value older than one this watcher took from
// the same identity.
var errReplayed = errors.New("signed before a newer value of the same host's was seen (a replay)")

// checkSignedLocked refuses a signed lease signed too far in the future,
// longer ago than MaxSignedAge, or (less ClockSkew) before the newest
// value taken from its identity.
func (w *Watcher) checkSignedLocked(l Lease, now time.Time) error {
	at := time.Unix(l.Attrs.SignedAt, 0)
	switch {
	case l.Attrs.SignedAt == 0:
		return fmt.Errorf("%w: lease %s is signed but says not when (WeftSigned)", ErrBadLease, l.Key())
	case at.After(now.Add(ClockSkew)):
		return fmt.Errorf("%w: lease %s was signed at %s, in the future (clocks more than %s apart?)", ErrBadLease, l.Key(),
			at.UTC().Format(time.RFC3339), ClockSkew)
	case now.Sub(at) > MaxSignedAge:
		return fmt.Errorf("%w: lease %s was signed at %s, longer ago than %s: a replay, or its host is gone", ErrBadLease,
			l.Key(), at.UTC().Format(time.RFC3339), MaxSignedAge)
	case l.Attrs.SignedAt+int64(ClockSkew/time.Second) < w.newest[l.Attrs.Identity]:
		return fmt.Errorf("%w: lease %s: %w", ErrBadLease, l.Key(), errReplayed)
	}
	return nil
}

func (w *Watcher) notify() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// sleep waits d or until ctx ends; false if ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Backoff is an exponential delay with a cap; the zero value is not usable,
// use NewBackoff.
type Backoff struct {
	first, max, cur time.Duration
}

// NewBackoff starts at first and doubles up to max.
func NewBackoff(first, max time.Duration) *Backoff {
	return &Backoff{first: first, max: max}
}

// Next returns the delay to wait now and doubles the next one.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.first
	}
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d
}

// Reset starts over from the first delay.
func (b *Backoff) Reset() { b.cur = 0 }
