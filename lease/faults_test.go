package lease_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

// TestRaceForTheLastSubnets: 200 claimers, 150 free subnets.
func TestRaceForTheLastSubnets(t *testing.T) {
	s, _ := startEtcd(t)
	// 10.5.1.0 .. 10.5.150.0: exactly 150 subnets.
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.150.0"}`)
	const claimers = 200
	got, errs := claimAll(s, cfg, claimers)
	owners := map[netip.Prefix]int{}
	failed := 0
	for i := range claimers {
		if errs[i] != nil {
			if !errors.Is(errs[i], lease.ErrNoFreeSubnet) || !strings.Contains(errs[i].Error(), "all 150 subnets") {
				t.Errorf("claimer %d: unclear error %v", i, errs[i])
			}
			failed++
			continue
		}
		if j, dup := owners[got[i].Subnet]; dup {
			t.Errorf("claimers %d and %d both hold %s", i, j, got[i].Subnet)
		}
		owners[got[i].Subnet] = i
	}
	records, _, _ := s.List(context.Background())
	if len(owners) != 150 || failed != 50 || len(records) != 150 {
		t.Fatalf("%d leases, %d errors, %d records in etcd; want 150, 50, 150", len(owners), failed, len(records))
	}
}

// TestWatchConvergesThroughChurnAndCompaction writes 10,000 lease changes
// with compactions in between; the watcher's view must equal etcd's, key by
// key, and its log must stay small.
func TestWatchConvergesThroughChurnAndCompaction(t *testing.T) {
	s, _ := startEtcd(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	w := startWatcher(t, s, &logs)

	const writes, keys, writers = 10000, 500, 8
	var wg sync.WaitGroup
	for wr := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(wr), 7))
			for n := range writes / writers {
				key := fmt.Sprintf("10.5.%d.%d-30", rng.IntN(keys)/64, rng.IntN(64)*4)
				var err error
				if rng.IntN(4) == 0 {
					err = s.Delete(ctx, key)
				} else {
					_, err = s.Create(ctx, key, hostAttrs(n).Encode(), time.Hour)
					if errors.Is(err, lease.ErrExists) {
						err = nil
					}
				}
				if err != nil {
					t.Error(err)
					return
				}
				if wr == 0 && n%250 == 0 {
					if err := s.Compact(ctx); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	truth, _, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, r := range truth {
		want[r.Key] = string(r.Value)
	}
	waitFor(t, "watcher matches etcd key by key", func() bool {
		got := w.Leases()
		if len(got) != len(want) {
			return false
		}
		for _, l := range got {
			if want[l.Key()] != string(l.Attrs.Encode()) {
				return false
			}
		}
		return true
	})
	if lines := strings.Count(logs.String(), "\n"); lines > 50 {
		t.Errorf("%d log lines for 10,000 writes; the watch must not log per event:\n%s", lines, logs.String())
	}
	t.Logf("converged on %d leases after %d writes; %d relists; %d log lines", len(want), writes, w.Relists(), strings.Count(logs.String(), "\n"))
}
