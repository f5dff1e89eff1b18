package lease_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdtest"
	"github.com/weftnet/weft/lease/leasetest"
)

// startEtcd runs a real etcd for one test and returns a store on it with a
// run-unique prefix.
func startEtcd(t *testing.T) (*lease.EtcdStore, *etcdtest.Server) {
	t.Helper()
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	store, err := lease.NewEtcdStore(lease.EtcdOptions{Endpoints: []string{srv.Endpoint}, Prefix: "/weft-test/" + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store, srv
}

// stores runs f against a real etcd and against the in-memory fake, so the
// fake stays faithful to what it stands in for.
func stores(t *testing.T, f func(t *testing.T, s lease.Store)) {
	t.Run("etcd", func(t *testing.T) { s, _ := startEtcd(t); f(t, s) })
	t.Run("fake", func(t *testing.T) { f(t, leasetest.New(nil)) })
}

func mustConfig(t *testing.T, js string) *lease.Config {
	t.Helper()
	cfg, err := lease.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func hostAttrs(i int) lease.Attrs {
	return lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), BackendType: "host-gw"}
}

func testLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestConcurrentClaimsGetDistinctSubnets(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
		const hosts = 50
		got, errs := claimAll(s, cfg, hosts)
		seen := map[netip.Prefix]int{}
		for i, l := range got {
			if errs[i] != nil {
				t.Fatalf("host %d: %v", i, errs[i])
			}
			if !cfg.Fits(l.Subnet) {
				t.Errorf("host %d got %s, outside the pool", i, l.Subnet)
			}
			if j, dup := seen[l.Subnet]; dup {
				t.Errorf("hosts %d and %d share %s", i, j, l.Subnet)
			}
			seen[l.Subnet] = i
		}
		records, _, _ := s.List(context.Background())
		if len(records) != hosts {
			t.Errorf("store holds %d leases, want %d", len(records), hosts)
		}
	})
}

func TestExhaustedPoolGivesClearError(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0"}`)
		_, errs := claimAll(s, cfg, 5)
		var failed []error
		for _, err := range errs {
			if err != nil {
				failed = append(failed, err)
			}
		}
		if len(failed) != 1 {
			t.Fatalf("%d claims failed, want exactly 1: %v", len(failed), failed)
		}
		want := "no free subnet in network 10.5.0.0/16: all 4 subnets of /24 between 10.5.1.0 and 10.5.4.0 are leased"
		if !errors.Is(failed[0], lease.ErrNoFreeSubnet) || failed[0].Error() != want {
			t.Errorf("error = %q, want %q", failed[0], want)
		}
	})
}

func TestRestartedHostKeepsItsSubnet(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		first, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(7)})
		if err != nil {
			t.Fatal(err)
		}
		// Same PublicIP again: the lease in the store is found and renewed.
		again, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(7)})
		if err != nil || again.Subnet != first.Subnet {
			t.Fatalf("restart got %v (%v), want %s", again.Subnet, err, first.Subnet)
		}
		// Lease gone from the store (etcd wiped): the subnet file's subnet wins.
		if err := s.Delete(ctx, first.Key()); err != nil {
			t.Fatal(err)
		}
		prev := netip.MustParsePrefix("10.5.77.0/24")
		fromFile, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(7), Previous: prev})
		if err != nil || fromFile.Subnet != prev {
			t.Fatalf("claim with subnet-file hint got %v (%v), want %s", fromFile.Subnet, err, prev)
		}
		// A previous subnet held by someone else is not taken.
		other, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(8), Previous: prev})
		if err != nil || other.Subnet == prev {
			t.Fatalf("second host got %v (%v); must not get the taken %s", other.Subnet, err, prev)
		}
	})
}

func TestHolderReclaimsDeletedLease(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		req := lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(9), TTL: time.Hour}
		l, err := lease.Claim(ctx, s, req)
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		holder := lease.NewHolder(s, req, l, time.Minute, testLogger(&logs))
		peer := lease.NewWatcher(s, testLogger(&logs))
		done := make(chan struct{})
		go func() { defer close(done); holder.Run(ctx) }()
		go peer.Run(ctx)
		defer func() { cancel(); <-done }()
		waitFor(t, "peer sees the lease", func() bool { return len(peer.Leases()) == 1 })

		if err := s.Delete(ctx, l.Key()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "peer sees the deletion", func() bool { return len(peer.Leases()) == 0 })
		holder.Verify() // what the node does when its watch sees its own key go
		waitFor(t, "lease claimed again", func() bool {
			ls := peer.Leases()
			return len(ls) == 1 && ls[0].Subnet == l.Subnet && ls[0].Attrs.PublicIP == req.Attrs.PublicIP
		})
		if holder.Current().Subnet != l.Subnet {
			t.Errorf("holder moved to %s, want %s", holder.Current().Subnet, l.Subnet)
		}
		if !strings.Contains(logs.String(), "lease was lost and has been claimed again") {
			t.Errorf("no log line about the re-claim:\n%s", logs.String())
		}
	})
}

func TestRenewAndLostLease(t *testing.T) {
	s, _ := startEtcd(t)
	ctx := context.Background()
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(3), TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec := lease.Record{Key: l.Key(), StoreLeaseID: l.StoreLeaseID, Revision: l.Revision}
	ttl, err := s.Renew(ctx, rec)
	if err != nil || ttl < 29*time.Second {
		t.Fatalf("Renew = %v, %v", ttl, err)
	}
	left, err := s.Expiry(ctx, rec)
	if err != nil || left <= 0 || left > 30*time.Second {
		t.Fatalf("Expiry = %v, %v", left, err)
	}
	rec.StoreLeaseID = 12345
	if _, err := s.Renew(ctx, rec); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("Renew of an unknown lease = %v, want ErrLeaseLost", err)
	}
}

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

// claimAll has n hosts (PublicIPs 192.168.0.1..n) claim at once.
func claimAll(s lease.Store, cfg *lease.Config, n int) ([]lease.Lease, []error) {
	got := make([]lease.Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			got[i], errs[i] = lease.Claim(context.Background(), s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(i + 1)})
		})
	}
	wg.Wait()
	return got, errs
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

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ExampleSubnetKey() {
	fmt.Println(lease.SubnetKey(netip.MustParsePrefix("10.5.34.0/24")))
	// Output: 10.5.34.0-24
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

// TestClaimKeepsReservations: a lease written without a TTL (a flannel
// reservation, Documentation/reservations.md) for this host's PublicIP is
// reused and stays without one; this host's lease from an older config
// that no longer fits is deleted, as flannel does.
func TestClaimKeepsReservations(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		reserved := hostAttrs(7)
		if _, err := s.Create(ctx, "10.5.77.0-24", reserved.Encode(), 0); err != nil {
			t.Fatal(err)
		}
		l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: reserved, TTL: time.Hour})
		if err != nil || l.Subnet != netip.MustParsePrefix("10.5.77.0/24") {
			t.Fatalf("claim = %v, %v; want the reservation 10.5.77.0/24", l.Subnet, err)
		}
		rec, ok, err := s.Get(ctx, "10.5.77.0-24")
		if err != nil || !ok || rec.StoreLeaseID != 0 || l.StoreLeaseID != 0 || !l.Expiration.IsZero() {
			t.Errorf("the reservation got a TTL: record %+v, lease %+v (%v)", rec, l, err)
		}

		other := hostAttrs(8)
		if _, err := s.Create(ctx, "10.9.3.0-24", other.Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		l, err = lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: other, TTL: time.Hour})
		if err != nil || !cfg.Fits(l.Subnet) {
			t.Fatalf("claim = %v, %v", l.Subnet, err)
		}
		if _, ok, _ := s.Get(ctx, "10.9.3.0-24"); ok {
			t.Error("this host's lease that no longer fits the config was left in place")
		}
	})
}

// TestHolderLeavesAReservationAlone: renewing a reservation does not turn
// it into a TTL lease or re-claim it.
func TestHolderLeavesAReservationAlone(t *testing.T) {
	store := leasetest.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	attrs := hostAttrs(9)
	store.Create(ctx, "10.5.90.0-24", attrs.Encode(), 0)
	req := lease.ClaimRequest{Config: cfg, Attrs: attrs, TTL: 3 * time.Second}
	l, err := lease.Claim(ctx, store, req)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	h := lease.NewHolder(store, req, l, time.Second, testLogger(&logs))
	go h.Run(ctx)
	time.Sleep(2500 * time.Millisecond) // past one renewal time (TTL/3)
	rec, ok, _ := store.Get(ctx, "10.5.90.0-24")
	if !ok || rec.StoreLeaseID != 0 || rec.Revision != l.Revision || h.Current().Subnet != l.Subnet {
		t.Errorf("the reservation was rewritten: %+v\n%s", rec, logs.String())
	}
}

// TestJunkKeysTakeNoSubnet: keys that cannot hold a peer (another length,
// outside the Network) do not fill the pool.
func TestJunkKeysTakeNoSubnet(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		for _, key := range []string{"0.0.0.0-1", "10.5.0.0-16", "10.0.0.0-8"} {
			if _, err := s.Create(ctx, key, hostAttrs(99).Encode(), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(1), TTL: time.Hour}); err != nil || !cfg.Fits(l.Subnet) {
			t.Fatalf("claim beside junk keys = %v, %v", l.Subnet, err)
		}
	})
}

// TestHolderTakesBackAnOverwrittenLease: another writer overwrites this
// host's lease in place with its own PublicIP; the holder takes it back
// with the same subnet and counts it. A lease that was deleted and created
// again by another host is followed instead (the subnet moves).
func TestHolderTakesBackAnOverwrittenLease(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
		req := lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(1), TTL: time.Hour}
		l, err := lease.Claim(ctx, s, req)
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		h := lease.NewHolder(s, req, l, time.Minute, testLogger(&logs))
		go h.Run(ctx)
		rec, _, _ := s.Get(ctx, l.Key())
		if _, err := s.Replace(ctx, rec, hostAttrs(66).Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		h.Verify()
		waitFor(t, "the lease back with its owner", func() bool {
			r, ok, _ := s.Get(ctx, l.Key())
			return ok && string(r.Value) == string(req.Attrs.Encode())
		})
		if h.Current().Subnet != l.Subnet || h.Conflicts() != 1 {
			t.Errorf("subnet %s (had %s), %d conflicts", h.Current().Subnet, l.Subnet, h.Conflicts())
		}
		if !strings.Contains(logs.String(), "overwritten by another writer") || !strings.Contains(logs.String(), "their_public_ip=192.168.0.66") {
			t.Errorf("no error naming the writer:\n%s", logs.String())
		}

		// Expired and claimed by another host: a new key incarnation.
		if err := s.Delete(ctx, l.Key()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, l.Key(), hostAttrs(77).Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		h.Verify()
		waitFor(t, "the holder moves to a new subnet", func() bool { return h.Current().Subnet != l.Subnet })
		if h.Conflicts() != 1 {
			t.Errorf("a subnet taken after expiry was counted as a conflict")
		}
	})
}

// TestGetAt: a key as it was at a revision, in etcd and in the fake alike.
func TestGetAt(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		first, err := s.Create(ctx, "10.5.1.0-24", hostAttrs(1).Encode(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		second, err := s.Replace(ctx, first, hostAttrs(2).Encode(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, "10.5.1.0-24"); err != nil {
			t.Fatal(err)
		}
		now, err := s.Revision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			rev     int64
			present bool
			modRev  int64
		}{{first.Revision - 1, false, 0}, {first.Revision, true, first.Revision}, {second.Revision, true, second.Revision}, {now, false, 0}} {
			r, ok, err := s.GetAt(ctx, "10.5.1.0-24", c.rev)
			if err != nil || ok != c.present || ok && r.Revision != c.modRev {
				t.Errorf("at revision %d: %+v %v %v, want present=%v modified at %d", c.rev, r, ok, err, c.present, c.modRev)
			}
		}
		if _, _, err := s.GetAt(ctx, "10.5.1.0-24", now+10); !errors.Is(err, lease.ErrFutureRevision) {
			t.Errorf("a future revision: %v, want ErrFutureRevision", err)
		}
		if c, ok := s.(interface{ Compact(context.Context) error }); ok {
			c.Compact(ctx)
		} else {
			s.(*leasetest.Store).Compact()
		}
		if _, _, err := s.GetAt(ctx, "10.5.1.0-24", first.Revision); !errors.Is(err, lease.ErrCompacted) {
			t.Errorf("a compacted revision: %v, want ErrCompacted", err)
		}
	})
}

// TestClaimSkipsDualStackSubnets: a flannel host's dual-stack lease holds
// its IPv4 subnet like any other; weft never hands that subnet out again.
func TestClaimSkipsDualStackSubnets(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.2.0"}`)
		if _, err := s.Create(ctx, "10.5.1.0-24&fc00:0:0:1::-64", []byte(`{"PublicIP":"192.168.9.9","PublicIPv6":"fc00::9","BackendType":"host-gw"}`), time.Hour); err != nil {
			t.Fatal(err)
		}
		l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(1)})
		if err != nil || l.Subnet.String() != "10.5.2.0/24" {
			t.Fatalf("claim = %v %v, want 10.5.2.0/24 (10.5.1.0/24 is the dual-stack host's)", l.Subnet, err)
		}
		// The dual-stack host itself, come back as weft, keeps its key.
		again, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.9.9"), BackendType: "host-gw"}})
		if err != nil || again.Key() != "10.5.1.0-24&fc00:0:0:1::-64" {
			t.Fatalf("re-claim of the dual-stack lease = %v %v", again.Key(), err)
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
	waitFor(t, "the wipe seen", func() bool { _, ok := w.Record("10.5.1.0-24"); return !ok })
	s.PutRaw("10.5.1.0-24", hostAttrs(1).Encode()) // its host claims it again
	waitFor(t, "the leases nobody claimed again dropped", func() bool { return len(w.Leases()) == 1 })
	if l, ok := w.Lease("10.5.1.0-24"); !ok || l.Attrs.PublicIP != hostAttrs(1).PublicIP {
		t.Fatalf("the re-claimed lease: %+v %v", l, ok)
	}
	if n := gaps.Load(); n != 0 {
		t.Errorf("the re-claimed lease left the set %d times", n)
	}
}
