package lease_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/etcdtest"
	"github.com/weftnet/weft/lease/leasetest"
)

// startEtcd runs a real etcd for one test and returns a store on it with a
// run-unique prefix.
func startEtcd(t *testing.T) (*etcdstore.Store, *etcdtest.Server) {
	t.Helper()
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	store, err := etcdstore.New(etcdstore.Options{Endpoints: []string{srv.Endpoint}, Prefix: "/weft-test/" + t.Name()})
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

// freeKeys returns n keys of /24s in 10.5.0.0/16, from 10.5.from.0 up,
// that no record in s holds. Claims pick subnets at random, so a lease a
// test writes beside them must not sit at a fixed subnet.
func freeKeys(t *testing.T, s lease.Store, from, n int) []string {
	t.Helper()
	recs, _, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, r := range recs {
		held[r.Key] = true
	}
	var keys []string
	for i := from; i < 256 && len(keys) < n; i++ {
		if k := fmt.Sprintf("10.5.%d.0-24", i); !held[k] {
			keys = append(keys, k)
		}
	}
	if len(keys) < n {
		t.Fatalf("fewer than %d free subnets from 10.5.%d.0", n, from)
	}
	return keys
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

// TestConcurrentDualStackClaimsGetDistinctSubnets: a dual-stack key names
// both halves, so two hosts that pick the same IPv4 subnet with different
// IPv6 ones write different keys; neither half may still be shared. Each
// pool has 16 subnets for 16 hosts, so random picks collide in every run.
func TestConcurrentDualStackClaimsGetDistinctSubnets(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		cfg := mustConfig(t, `{"Network":"10.5.0.0/20","SubnetMin":"10.5.0.0","SubnetMax":"10.5.15.0","EnableIPv6":true,"IPv6Network":"fc00:5::/60","IPv6SubnetMin":"fc00:5::","IPv6SubnetMax":"fc00:5:0:f::","Backend":{"Type":"host-gw"}}`)
		const hosts = 16
		got, errs := claimAll(s, cfg, hosts)
		seen, seen6 := map[netip.Prefix]int{}, map[netip.Prefix]int{}
		for i, l := range got {
			if errs[i] != nil {
				t.Fatalf("host %d: %v", i, errs[i])
			}
			if j, dup := seen[l.Subnet]; dup {
				t.Errorf("hosts %d and %d share %s (keys %s and %s)", i, j, l.Subnet, l.Key(), got[j].Key())
			}
			if j, dup := seen6[l.IPv6Subnet]; dup {
				t.Errorf("hosts %d and %d share %s (keys %s and %s)", i, j, l.IPv6Subnet, l.Key(), got[j].Key())
			}
			seen[l.Subnet], seen6[l.IPv6Subnet] = i, i
		}
		// The interleaving itself: another host writes the same IPv4
		// subnet with another IPv6 half between this host's List and its
		// write.
		rest := mustConfig(t, `{"Network":"10.6.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:6::/56","Backend":{"Type":"host-gw"}}`)
		want := netip.MustParsePrefix("10.6.7.0/24")
		racer := &createAfterList{Store: s, key: lease.DualSubnetKey(want, netip.MustParsePrefix("fc00:6:0:1::/64")), value: hostAttrs(100).Encode()}
		l, err := lease.Claim(context.Background(), racer, lease.ClaimRequest{Config: rest, Attrs: hostAttrs(101), Previous: want})
		if err != nil || !racer.done || l.Subnet == want || !rest.Fits(l.Subnet) {
			t.Errorf("claim that lost %s to a racer: %s %v (racer wrote: %v), want another subnet", want, l.Key(), err, racer.done)
		}
	})
}

// createAfterList is a store on which another host creates key right after
// the first List, as a racing claim would.
type createAfterList struct {
	lease.Store
	key   string
	value []byte
	done  bool
}

func (c *createAfterList) List(ctx context.Context) ([]lease.Record, int64, error) {
	records, rev, err := c.Store.List(ctx)
	if err == nil && !c.done {
		_, err = c.Store.Create(ctx, c.key, c.value, time.Hour)
		c.done = err == nil
	}
	return records, rev, err
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

		// Issue 30, item 12: this host's own PublicIP with another
		// backend's data (another WireGuard key), written by someone else,
		// is a conflict too; attributes this holder changes itself (a key
		// rotated) are not.
		rec, _, _ = s.Get(ctx, l.Key())
		other := req.Attrs
		other.BackendData = []byte(`{"PublicKey":"stolen","Port":51820}`)
		if _, err := s.Replace(ctx, rec, other.Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		h.Verify()
		waitFor(t, "the lease back with its own data", func() bool {
			r, ok, _ := s.Get(ctx, l.Key())
			return ok && string(r.Value) == string(req.Attrs.Encode()) && h.Conflicts() == 2
		})
		rotated := req.Attrs
		rotated.BackendData = []byte(`{"PublicKey":"rotated","Port":51820}`)
		h.SetAttrs(rotated)
		waitFor(t, "the rotated data written", func() bool {
			r, ok, _ := s.Get(ctx, l.Key())
			return ok && string(r.Value) == string(rotated.Encode())
		})
		if h.Conflicts() != 2 {
			t.Errorf("a key rotated by this host counted as a conflict: %d", h.Conflicts())
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
		if h.Conflicts() != 2 {
			t.Errorf("a subnet taken after expiry was counted as a conflict")
		}
	})
}

// TestHolderBacksOffARecurringOverwrite: a writer that overwrites this
// host's lease again as soon as it is taken back gets the first three
// take-backs at once, then each after a longer wait; the holder keeps
// running and its subnet, says so once per wait, and reports the lease
// contested meanwhile.
func TestHolderBacksOffARecurringOverwrite(t *testing.T) {
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
		done := make(chan error, 1)
		go func() { done <- h.Run(ctx) }()
		overwrite := func() {
			t.Helper()
			rec, _, _ := s.Get(ctx, l.Key())
			if _, err := s.Replace(ctx, rec, hostAttrs(66).Encode(), time.Hour); err != nil {
				t.Fatal(err)
			}
			h.Verify()
		}
		for i := 1; i <= 3; i++ {
			overwrite()
			waitFor(t, "an immediate take-back", func() bool { return h.Conflicts() == uint64(i) })
		}
		overwrite()
		waitFor(t, "the fourth take-back put off", func() bool { return h.Contested() })
		if h.Conflicts() != 3 {
			t.Errorf("the fourth overwrite was taken back at once (%d conflicts)", h.Conflicts())
		}
		waitFor(t, "the fourth taken back after its wait", func() bool { return h.Conflicts() == 4 })
		if h.Current().Subnet != l.Subnet || !strings.Contains(logs.String(), "taking it back less often") {
			t.Errorf("subnet %s (had %s); log:\n%s", h.Current().Subnet, l.Subnet, logs.String())
		}
		select {
		case err := <-done:
			t.Fatalf("the holder ended: %v", err)
		default:
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
		// The dual-stack host itself, come back on this IPv4-only network,
		// keeps its IPv4 subnet and drops the IPv6 half (flannel would
		// delete the lease and pick anew).
		again, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.9.9"), BackendType: "host-gw"}})
		if err != nil || again.Key() != "10.5.1.0-24" {
			t.Fatalf("re-claim of the dual-stack lease on an IPv4-only network = %v %v, want 10.5.1.0-24", again.Key(), err)
		}
		if _, ok, _ := s.Get(ctx, "10.5.1.0-24&fc00:0:0:1::-64"); ok {
			t.Error("the old dual-stack key is still there")
		}
	})
}

// TestClaimIPv6Only: on an IPv6-only network every lease has flannel's
// empty IPv4 half ("0.0.0.0-0&..." and PublicIP 0.0.0.0), hosts are told
// apart by PublicIPv6, and a host claiming again keeps its lease.
func TestClaimIPv6Only(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		cfg := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}`)
		host := func(i int) lease.Attrs {
			ip6 := netip.MustParseAddr(fmt.Sprintf("fd50::%d", i))
			return lease.Attrs{PublicIPv6: &ip6, BackendType: "vxlan"}
		}
		a, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: host(1)})
		if err != nil || a.Subnet.IsValid() || !cfg.Fits6(a.IPv6Subnet) || !strings.HasPrefix(a.Key(), "0.0.0.0-0&fc00:5:") {
			t.Fatalf("first host: %s %v", a.Key(), err)
		}
		b, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: host(2)})
		if err != nil || b.IPv6Subnet == a.IPv6Subnet {
			t.Fatalf("second host: %s %v (first %s)", b.Key(), err, a.Key())
		}
		again, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: host(1)})
		if err != nil || again.Key() != a.Key() {
			t.Fatalf("first host again: %s %v, want %s", again.Key(), err, a.Key())
		}
		rec, ok, _ := s.Get(ctx, a.Key())
		if !ok || !strings.HasPrefix(string(rec.Value), `{"PublicIP":"0.0.0.0","PublicIPv6":"fd50::1"`) {
			t.Errorf("value %s, want flannel's IPv6-only form", rec.Value)
		}
		if l, err := lease.DecodeLease(rec.Key, rec.Value); err != nil || l.Subnet.IsValid() || l.IPv6Subnet != a.IPv6Subnet {
			t.Errorf("decoded %+v %v", l, err)
		}
	})
}

// TestClaimDualStack: on a dual-stack network every host gets an IPv6
// subnet beside its IPv4 one, under flannel's joined key; a host whose
// IPv4-only lease predates EnableIPv6 keeps its IPv4 subnet; the previous
// IPv6 subnet (from the subnet file) is preferred; a full IPv6 range is a
// clear error.
func TestClaimDualStack(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		v4only := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
		dual := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00:5::/124","IPv6SubnetMax":"fc00:5::8"}`)
		old, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: v4only, Attrs: hostAttrs(1)})
		if err != nil {
			t.Fatal(err)
		}
		up, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: dual, Attrs: hostAttrs(1)})
		if err != nil || up.Subnet != old.Subnet || !dual.Fits6(up.IPv6Subnet) || up.Key() != lease.DualSubnetKey(old.Subnet, up.IPv6Subnet) {
			t.Fatalf("IPv6 turned on: %s %v, want %s with an IPv6 half in fc00:5::/124", up.Key(), err, old.Subnet)
		}
		recs, _, _ := s.List(ctx)
		if len(recs) != 1 || recs[0].Key != up.Key() {
			t.Fatalf("store holds %v, want only %s", recs, up.Key())
		}
		// /126s from fc00:5::4 to fc00:5::8: two subnets.
		other := "fc00:5::4/126"
		if up.IPv6Subnet.String() == other {
			other = "fc00:5::8/126"
		}
		second, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: dual, Attrs: hostAttrs(2), PreviousIPv6: netip.MustParsePrefix(other)})
		if err != nil || second.IPv6Subnet.String() != other || second.Subnet == up.Subnet {
			t.Fatalf("second host = %s %v, want the free IPv6 subnet %s", second.Key(), err, other)
		}
		if third, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: dual, Attrs: hostAttrs(3)}); !errors.Is(err, lease.ErrNoFreeSubnet) || !strings.Contains(err.Error(), "IPv6Network fc00:5::/124") {
			t.Errorf("third host on a full IPv6 range: %s %v, want ErrNoFreeSubnet naming IPv6Network", third.Key(), err)
		}
	})
}

// peerStores runs f against the etcd PeerStore and the in-memory one.
func peerStores(t *testing.T, f func(t *testing.T, s lease.PeerStore)) {
	t.Run("etcd", func(t *testing.T) { s, _ := startEtcd(t); f(t, s) })
	t.Run("fake", func(t *testing.T) { f(t, leasetest.New(nil)) })
}

// TestWatchPeers: the outside peers are read at once and again after each
// change, with no poll in between; a taken name is refused; each record
// carries the revision that created it.
func TestWatchPeers(t *testing.T) { peerStores(t, checkWatchPeers) }

func checkWatchPeers(t *testing.T, store lease.PeerStore) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sets := make(chan []lease.OutsidePeer, 16)
	done := make(chan error, 1)
	go func() {
		done <- store.WatchPeers(ctx, func(peers []lease.OutsidePeer, _ []error) { sets <- peers })
	}()
	next := func(want int) []lease.OutsidePeer {
		t.Helper()
		select {
		case peers := <-sets:
			if len(peers) != want {
				t.Fatalf("%d peers, want %d: %+v", len(peers), want, peers)
			}
			return peers
		case <-time.After(5 * time.Second):
			t.Fatalf("no update with %d peers", want)
		}
		return nil
	}
	next(0)
	key := "mNxmpXEjXMZu8+uc4tM9f9lBnKNWhR3pvCNkNvk1qhM="
	peer := lease.OutsidePeer{Name: "laptop", PublicKey: key, Address: netip.MustParsePrefix("10.6.0.1/32")}
	if err := store.AddPeer(ctx, peer); err != nil {
		t.Fatal(err)
	}
	if got := next(1); got[0].Name != "laptop" || got[0].Created == 0 {
		t.Errorf("%+v", got)
	}
	if err := store.AddPeer(ctx, peer); !errors.Is(err, lease.ErrExists) {
		t.Errorf("a taken name: %v", err)
	}
	if found, err := store.RemovePeer(ctx, "laptop"); err != nil || !found {
		t.Fatal(found, err)
	}
	next(0)
	if found, err := store.RemovePeer(ctx, "laptop"); err != nil || found {
		t.Errorf("removing a gone peer: %v %v", found, err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("WatchPeers ended with %v", err)
	}
}

// TestListReadsEveryPage: etcd's List reads the leases in pages of
// 1,000; 2,345 leases come back whole, each once, at one revision.
func TestListReadsEveryPage(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		const n = 2345
		for i := range n {
			key := fmt.Sprintf("10.%d.%d.0-24", 1+i/256, i%256)
			if _, err := s.Create(ctx, key, hostAttrs(i).Encode(), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		records, rev, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, r := range records {
			if seen[r.Key] || r.Revision > rev {
				t.Fatalf("%s listed twice or past the list's revision %d", r.Key, rev)
			}
			seen[r.Key] = true
		}
		if len(seen) != n {
			t.Fatalf("listed %d leases, want %d", len(seen), n)
		}
	})
}
