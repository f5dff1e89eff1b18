package lease_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
)

func TestWatchSurvivesCompactionAndGarbage(t *testing.T) {
	s, _ := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// SubnetMax keeps the claims off the garbage keys below.
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMax":"10.5.150.0"}`)
	var logs syncBuffer
	w := startWatcher(t, s, &logs)

	for i := range 5 {
		if _, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "5 leases", func() bool { return len(w.Leases()) == 5 })

	// Garbage written by someone else: skipped with one warning each.
	for key, value := range map[string]string{
		"10.5.200.0-24": `{"PublicIP":`, "banana": `{}`, "10.5.201.0-24": `{"PublicIP":"not-an-ip"}`,
	} {
		if _, err := s.Create(ctx, key, []byte(value), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	// A watch from before the compaction must say so, never skip silently.
	if resp := <-s.Watch(ctx, 1); !errors.Is(resp.Err, lease.ErrCompacted) {
		t.Fatalf("watch from a compacted revision: %+v, want ErrCompacted", resp)
	}
	for i := 5; i < 8; i++ {
		if _, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "8 valid leases after garbage and compaction", func() bool { return len(w.Leases()) == 8 })
	for _, key := range []string{"10.5.200.0-24", "banana", "10.5.201.0-24"} {
		if n := strings.Count(logs.String(), "key="+key); n != 1 {
			t.Errorf("%d warnings for %s, want 1:\n%s", n, key, logs.String())
		}
	}
}

// TestWatchRelistsAfterCompaction forces the watch to ask for compacted
// history (fake store, deterministic) and checks it lists again.
func TestWatchRelistsAfterCompaction(t *testing.T) {
	s := leasetest.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	w := lease.NewWatcher(s, testLogger(&logs))
	s.SetDown(true)
	go w.Run(ctx)
	s.PutRaw("10.5.1.0-24", hostAttrs(1).Encode())
	s.Compact()
	s.SetDown(false)
	waitFor(t, "lease seen", func() bool { return len(w.Leases()) == 1 })
	before := w.Relists()
	s.SetDown(true) // the watch breaks; the writes below happen meanwhile
	s.PutRaw("10.5.2.0-24", hostAttrs(2).Encode())
	s.Compact()
	s.SetDown(false)
	waitFor(t, "second lease seen via relist", func() bool { return len(w.Leases()) == 2 })
	if w.Relists() <= before {
		t.Errorf("no relist happened")
	}
}

// startWatcher runs a Watcher over s until the test ends.
func startWatcher(t *testing.T, s lease.Store, logs *syncBuffer) *lease.Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := lease.NewWatcher(s, testLogger(logs))
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// watchFive starts a watcher (checking every interval) on s holding
// leases 10.5.1.0/24 to 10.5.5.0/24 and waits until it has them all.
func watchFive(t *testing.T, s *leasetest.Store, interval time.Duration, logs *syncBuffer) *lease.Watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := lease.NewWatcher(s, testLogger(logs))
	w.CheckInterval = interval
	for i := 1; i <= 5; i++ {
		s.PutRaw(fmt.Sprintf("10.5.%d.0-24", i), hostAttrs(i).Encode())
	}
	go w.Run(ctx)
	waitFor(t, "5 leases", func() bool { return len(w.Leases()) == 5 })
	return w
}

// restored waits until w holds exactly n leases, all from 10.5.11.0/24 up.
func restored(t *testing.T, w *lease.Watcher, n int) {
	t.Helper()
	waitFor(t, "the restored store's leases, and only them", func() bool {
		ls := w.Leases()
		for _, l := range ls {
			if l.Subnet.Addr().As4()[2] < 11 {
				return false
			}
		}
		return len(ls) == n
	})
}

// TestWatchRelistsAfterWipe: a store restored empty (revision back to 0)
// would leave a watch waiting for revisions that never come; the watcher
// notices and lists again.
func TestWatchRelistsAfterWipe(t *testing.T) {
	s := leasetest.New(nil)
	var logs syncBuffer
	w := watchFive(t, s, 50*time.Millisecond, &logs)
	s.Wipe()
	s.PutRaw("10.5.9.0-24", hostAttrs(9).Encode())
	waitFor(t, "the wiped store's single lease", func() bool {
		ls := w.Leases()
		return len(ls) == 1 && ls[0].Key() == "10.5.9.0-24"
	})
	if !strings.Contains(logs.String(), "revision went back") {
		t.Errorf("no log line about the rewind:\n%s", logs.String())
	}
}

// TestWatchRelistsAfterOutage: etcd restored from a snapshot during an
// outage can have caught up past the revision the watch had reached by the
// time it answers again; a watch resumed from that revision would skip
// the restored store's history. The watcher lists again once the store is
// back.
func TestWatchRelistsAfterOutage(t *testing.T) {
	s := leasetest.New(nil)
	s.QuietWatchWhileDown = true
	var logs syncBuffer
	w := watchFive(t, s, 50*time.Millisecond, &logs)
	s.SetDown(true)
	waitFor(t, "the outage noticed", func() bool { return strings.Contains(logs.String(), "unreachable") })
	// Restored from an older backup holding other leases, and written to
	// past the old revision, before anyone reaches it again.
	s.Wipe()
	for i := 11; i <= 16; i++ {
		s.PutRaw(fmt.Sprintf("10.5.%d.0-24", i), hostAttrs(i).Encode())
	}
	s.SetDown(false)
	restored(t, w, 6)
}

// TestWatchNoticesRestoredHistory: a store restored from an older backup
// and written to until its revision is back where the watch was, with no
// outage the watcher saw, has another history: the watcher notices (the
// last change it saw is not in the store at that revision) and lists again.
func TestWatchNoticesRestoredHistory(t *testing.T) {
	s := leasetest.New(nil)
	var logs syncBuffer
	w := watchFive(t, s, 100*time.Millisecond, &logs)
	s.Wipe()
	for i := 11; i <= 15; i++ {
		s.PutRaw(fmt.Sprintf("10.5.%d.0-24", i), hostAttrs(i).Encode())
	}
	restored(t, w, 5)
}

// The watcher names the keys that changed, so the reconcile loop can work
// on them alone; a relist makes it start over.
func TestWatcherChangesSince(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var logs syncBuffer
		w := startWatcher(t, s, &logs)
		waitFor(t, "synced", w.Synced)
		_, gen, full := w.ChangesSince(0)
		if !full {
			t.Fatal("a new consumer must start from the whole set")
		}
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		ls, errs := claimAll(s, cfg, 2)
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "2 leases", func() bool { return len(w.Leases()) == 2 })
		keys, gen, full := w.ChangesSince(gen)
		slices.Sort(keys)
		want := []string{ls[0].Key(), ls[1].Key()}
		slices.Sort(want)
		if full || !slices.Equal(keys, want) {
			t.Fatalf("changes %v full=%v, want %v", keys, full, want)
		}
		if err := s.Delete(ctx, ls[0].Key()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "deletion seen", func() bool { _, ok := w.Lease(ls[0].Key()); return !ok })
		if keys, _, full := w.ChangesSince(gen); full || !slices.Equal(keys, []string{ls[0].Key()}) {
			t.Fatalf("after a delete: %v full=%v", keys, full)
		}
	})
}

// TestWatchKeepsLeasesWhileHostsReclaim: after a wipe, a lease whose host
// claims it again within the grace never leaves the watcher's set (the
// data path is not torn down and rebuilt), while its own host sees it
// missing at once; a lease nobody claims again goes after the grace.
func TestWatchKeepsLeasesWhileHostsReclaim(t *testing.T) {
	s := leasetest.New(nil)
	var logs syncBuffer
	w := watchFive(t, s, 200*time.Millisecond, &logs)
	var gaps atomic.Int32
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-w.Changed():
				if _, ok := w.Lease("10.5.1.0-24"); !ok {
					gaps.Add(1)
				}
			}
		}
	}()
	s.Wipe()
	waitFor(t, "the wipe seen", func() bool { _, ok := w.RecordRevision("10.5.1.0-24"); return !ok })
	s.PutRaw("10.5.1.0-24", hostAttrs(1).Encode()) // its host claims it again
	waitFor(t, "the leases nobody claimed again dropped", func() bool { return len(w.Leases()) == 1 })
	if l, ok := w.Lease("10.5.1.0-24"); !ok || l.Attrs.PublicIP != hostAttrs(1).PublicIP {
		t.Fatalf("the re-claimed lease: %+v %v", l, ok)
	}
	if n := gaps.Load(); n != 0 {
		t.Errorf("the re-claimed lease left the set %d times", n)
	}
}
