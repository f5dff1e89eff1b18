package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
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
		done <- watchBackendType(ctx, store, cfg, time.Hour, &latest, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
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

// TestConfigGuard: issue 42. A host with -require-encryption runs
// wireguard with StrictEncryption whatever the config says: a config
// switched to vxlan, or with StrictEncryption off, ends no run, and the
// guard says what it refused; a switch into the extension backend, or a
// change of its commands, is never taken up live (its commands run as
// root) and the guard says a restart is needed; a config back to what
// runs clears the note.
func TestConfigGuard(t *testing.T) {
	watch := func(t *testing.T, running string, guard *configGuard) (*leasetest.Store, chan error, context.CancelFunc) {
		t.Helper()
		store := leasetest.New([]byte(running))
		cfg, err := backends.ParseConfig([]byte(running))
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ = guard.pin(cfg)
		var latest atomic.Pointer[string]
		latest.Store(&cfg.Backend.Type)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		done := make(chan error, 1)
		go func() {
			done <- watchBackendType(ctx, store, cfg, time.Hour, &latest, guard, slog.New(slog.DiscardHandler))
		}()
		return store, done, cancel
	}
	kept := func(t *testing.T, store *leasetest.Store, done chan error, guard *configGuard, config, note string) {
		t.Helper()
		if err := store.PutConfig(context.Background(), []byte(config)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for !strings.Contains(guard.Note(), note) || note == "" && guard.Note() != "" {
			select {
			case err := <-done:
				t.Fatalf("config %s ended the run: %v", config, err)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("config %s: note %q, want one containing %q", config, guard.Note(), note)
			}
		}
	}

	t.Run("-require-encryption", func(t *testing.T) {
		guard := &configGuard{requireEncryption: true}
		// The config asks for vxlan from the start: the host runs
		// wireguard with strict mode.
		start := `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
		if cfg, overridden := guard.pin(mustConfig(t, start)); cfg.Backend.Type != backends.WireGuard || !cfg.StrictEncryption ||
			len(overridden) != 2 {
			t.Fatalf("pinned %+v, overridden %v", cfg, overridden)
		}
		store, done, cancel := watch(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"},"StrictEncryption":true}`, guard)
		defer cancel()
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"},"StrictEncryption":true}`, `Backend.Type "vxlan"`)
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`, "StrictEncryption off")
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"},"StrictEncryption":true}`, "")
	})
	t.Run("extension", func(t *testing.T) {
		guard := &configGuard{}
		store, done, cancel := watch(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, guard)
		defer cancel()
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"extension","PreStartupCommand":"touch /tmp/owned"}}`,
			"switches to the extension backend")
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, "")
	})
	t.Run("extension commands", func(t *testing.T) {
		guard := &configGuard{}
		store, done, cancel := watch(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"extension","PreStartupCommand":"true"}}`, guard)
		defer cancel()
		kept(t, store, done, guard, `{"Network":"10.5.0.0/16","Backend":{"Type":"extension","PreStartupCommand":"touch /tmp/owned"}}`,
			"changes the extension backend's commands")
	})
}

func mustConfig(t *testing.T, text string) *lease.Config {
	t.Helper()
	cfg, err := backends.ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
