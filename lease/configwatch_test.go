package lease_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

// TestStoresListInKeyOrder: both stores list leases in key order (etcd's
// order of a range), whatever order they were written in, so a caller
// that takes the first record of a kind behaves alike on both.
func TestStoresListInKeyOrder(t *testing.T) {
	keys := []string{"10.5.9.0-24", "10.5.10.0-24", "10.5.1.0-24", "10.5.200.0-24", "10.5.100.0-24", "10.5.2.0-24"}
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		for i, key := range keys {
			if _, err := s.Create(ctx, key, hostAttrs(i).Encode(), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		records, _, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range records {
			got = append(got, r.Key)
		}
		want := slices.Sorted(slices.Values(keys))
		if !slices.Equal(got, want) {
			t.Fatalf("listed %s\nwant     %s (byte order of the keys)", strings.Join(got, " "), strings.Join(want, " "))
		}
	})
}

// TestWatchConfig: a config watch signals once at its start, then after
// each write of the config within a second, and its channel closes when
// its context ends; lease writes do not wake it.
func TestWatchConfig(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		changed := s.WatchConfig(ctx)
		expectSignal := func(what string) {
			t.Helper()
			select {
			case <-changed:
			case <-time.After(time.Second):
				t.Fatalf("no signal within 1s %s", what)
			}
		}
		expectSignal("at the start")
		expectNone := func(what string) {
			t.Helper()
			select {
			case <-changed:
				t.Fatalf("a signal %s", what)
			case <-time.After(300 * time.Millisecond):
			}
		}
		expectNone("with nothing written")
		if _, err := s.Create(ctx, "10.5.1.0-24", hostAttrs(1).Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		expectNone("after a lease write")
		for i, cfg := range []string{`{"Network":"10.5.0.0/16"}`, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`} {
			if err := s.PutConfig(ctx, []byte(cfg)); err != nil {
				t.Fatal(err)
			}
			expectSignal("after config write " + string(rune('1'+i)))
			raw, err := s.Config(ctx)
			if err != nil || string(raw) != cfg {
				t.Fatalf("Config after the signal: %s, %v; want %s", raw, err, cfg)
			}
		}
		cancel()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case _, open := <-changed:
				if !open {
					return
				}
			case <-deadline:
				t.Fatal("the watch's channel stays open after its context ended")
			}
		}
	})
}
