package liveswitch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// Build makes the backend env's config asks for and, when plan keeps
// legacy backends, those beside it, all in one Switching; each is taken
// running from the previous run (h) when it was built the same, else built
// anew. What the previous run handed over and this one does not take is
// closed. Backends built anew are set up (their devices created or
// adopted); those taken over are running already.
func Build(ctx context.Context, env backends.Env, plan Plan, h *HandOver) (backends.Backend, error) {
	// ready: backends the previous run handed over running, which need
	// no Setup.
	ready := map[string]bool{}
	primaryType := env.Config.Backend.Type
	backend, ok := h.Take(Spec{Type: primaryType, Raw: env.Config.Backend.Raw})
	if ok {
		ready[primaryType] = true
	} else {
		b, err := backends.New(env)
		if err != nil {
			return nil, err
		}
		backend = b
	}
	if len(plan.Legacy) > 0 {
		legacy, err := buildLegacy(env, plan, h, ready)
		if err != nil {
			return nil, err
		}
		s := NewSwitching(primaryType, backend, plan.LegacyTypes(), legacy)
		s.SetReady(ready)
		backend = s
	}
	h.CloseRest()
	if ready[primaryType] && len(plan.Legacy) == 0 {
		return backend, nil
	}
	if err := backend.Setup(ctx); err != nil {
		return nil, fmt.Errorf("setting up the %s backend: %w", primaryType, err)
	}
	return backend, nil
}

// buildLegacy builds the legacy backends of plan, each with its own
// options on env's network, or takes them running from h (ready).
func buildLegacy(env backends.Env, plan Plan, h *HandOver, ready map[string]bool) (map[string]backends.Backend, error) {
	out := map[string]backends.Backend{}
	for _, spec := range plan.Legacy {
		cfg := *env.Config
		cfg.Backend = lease.BackendConfig{Type: spec.Type, Raw: spec.Raw}
		// Strict encryption and outside peers are the config's backend's.
		cfg.StrictEncryption, cfg.PeersNetwork = false, netip.Prefix{}
		if err := errors.Join(backends.CheckConfig(&cfg), backends.ValidateOptions(&cfg)); err != nil {
			return nil, fmt.Errorf("the previous backend %s: %w", spec.Type, err)
		}
		if b, ok := h.Take(spec); ok {
			out[spec.Type] = b
			ready[spec.Type] = true
			continue
		}
		e := env
		e.Config = &cfg
		b, err := backends.New(e)
		if err != nil {
			return nil, fmt.Errorf("the previous backend %s: %w", spec.Type, err)
		}
		out[spec.Type] = b
	}
	return out, nil
}
