package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// What a host holds against the network config, which anyone who can
// write etcd can change (issue 42): -require-encryption pins this host to
// the wireguard backend with StrictEncryption whatever the config says,
// and a switch into the extension backend (whose commands run as root)
// or a change of its commands is never taken up live, only at a restart,
// as flannel takes any config.

// configGuard is this host's pin and what it last refused or deferred of
// the config, for the log (once each) and /status.
type configGuard struct {
	requireEncryption bool
	// note says what of the stored config this run does not follow, and
	// why; nil when it follows all of it.
	note atomic.Pointer[string]
}

// pin is cfg as this host runs it: with -require-encryption, the
// wireguard backend (the config's own Backend object when it is
// wireguard's, else its defaults) and StrictEncryption. overridden names
// what the config asked for that the pin replaced.
func (g *configGuard) pin(cfg *lease.Config) (pinned *lease.Config, overridden []string) {
	if g == nil || !g.requireEncryption {
		return cfg, nil
	}
	out := *cfg
	if cfg.Backend.Type != backends.WireGuard {
		overridden = append(overridden, fmt.Sprintf("Backend.Type %q", cfg.Backend.Type))
		out.Backend = lease.BackendConfig{Type: backends.WireGuard, Raw: json.RawMessage(`{"Type":"wireguard"}`)}
	}
	if !cfg.StrictEncryption {
		overridden = append(overridden, "StrictEncryption off")
		out.StrictEncryption = true
	}
	return &out, overridden
}

// say records what the run does not follow (empty: it follows all) and
// logs it once each time it changes.
func (g *configGuard) say(note string, log *slog.Logger) {
	if g == nil {
		return
	}
	if old := g.note.Load(); old != nil && *old == note || old == nil && note == "" {
		return
	}
	if note == "" {
		g.note.Store(nil)
		log.Info("this host follows the network config again")
		return
	}
	g.note.Store(&note)
	log.Warn("not following the network config: " + note)
}

// Note is what of the stored config this run does not follow, and why
// (empty: none).
func (g *configGuard) Note() string {
	if g == nil {
		return ""
	}
	if n := g.note.Load(); n != nil {
		return *n
	}
	return ""
}

// refusedNote says what -require-encryption refused.
func refusedNote(overridden []string) string {
	return "the config asks for " + strings.Join(overridden, " and ") + "; this host requires encryption (-require-encryption) " +
		"and runs the wireguard backend with StrictEncryption: it reaches only hosts that speak wireguard"
}

// deferredNote says why a change of cfg waits for a restart, or "" when
// it may be taken up live: a switch into extension, or a change of its
// commands, runs commands as root that anyone who can write etcd wrote.
func deferredNote(running lease.BackendConfig, cfg *lease.Config) string {
	if cfg.Backend.Type != backends.Extension {
		return ""
	}
	if running.Type == backends.Extension {
		return "the config changes the extension backend's commands; they run as root, so weftd takes them up only when " +
			"restarted (restart weftd to run them)"
	}
	return "the config switches to the extension backend, whose commands run as root; weftd takes that up only when " +
		"restarted (restart weftd to switch)"
}
