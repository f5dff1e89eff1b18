package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
)

// TestConfigChangeTakenUpAtOnce: with a resync interval of an hour, a
// config that asks for another backend ends the run (errSwitch) as soon as
// it is written, through the store's watch of the config key; a config
// that does not validate, or one that changes nothing, does not.
func TestConfigChangeTakenUpAtOnce(t *testing.T) {
	const running = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
	store := leasetest.New([]byte(running))
	cfg, err := lease.ParseConfig([]byte(running))
	if err != nil {
		t.Fatal(err)
	}
	var latest atomic.Pointer[string]
	latest.Store(&cfg.Backend.Type)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- watchBackendType(ctx, store, cfg, time.Hour, &latest, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	for _, same := range []string{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"x"}}`,
		`{ "Network": "10.5.0.0/16", "Backend": { "Type": "vxlan" } }`} {
		if err := store.PutConfig(ctx, []byte(same)); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("config %s ended the run: %v", same, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
	written := time.Now()
	if err := store.PutConfig(ctx, []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errSwitch) {
			t.Fatalf("the run ended with %v, want errSwitch", err)
		}
		if *latest.Load() != backends.WireGuard {
			t.Errorf("latest type %q, want wireguard", *latest.Load())
		}
		t.Logf("taken up %s after the write", time.Since(written).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("a backend change was not taken up within 2s (resync interval 1h)")
	}
}
