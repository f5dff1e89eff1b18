package liveswitch

import (
	"github.com/weftnet/weft/backends"
)

// HandOver holds the backends a run hands to the next at a live switch, by
// Type, with the Backend object each was built from: the next run reuses
// one it asks for again, unchanged, so its device keeps running
// (wireguard-go and its sessions are not restarted, which would drop
// packets for a round trip). Runs are sequential: weftd's main loop owns
// one HandOver and passes it to each run. The zero value holds nothing.
type HandOver struct {
	held map[string]heldBackend
}

type heldBackend struct {
	spec Spec
	b    backends.Backend
}

// Keep holds a run's backends for the next run instead of closing them:
// running is what the run runs (a Switching, or one backend), specs the
// Backend objects it was built from, the primary first.
func (h *HandOver) Keep(running backends.Backend, specs []Spec) {
	parts := map[string]backends.Backend{}
	if s, ok := running.(*Switching); ok {
		parts = s.Backends()
	} else if len(specs) > 0 {
		parts[specs[0].Type] = running
	}
	if h.held == nil {
		h.held = map[string]heldBackend{}
	}
	for _, spec := range specs {
		if b, ok := parts[spec.Type]; ok {
			h.held[spec.Type] = heldBackend{spec: spec, b: b}
		}
	}
}

// Take is the running backend of spec handed over by the previous run, if
// it was built as spec asks.
func (h *HandOver) Take(spec Spec) (backends.Backend, bool) {
	c, ok := h.held[spec.Type]
	if !ok || !c.spec.sameAs(spec) {
		return nil, false
	}
	delete(h.held, spec.Type)
	return c.b, true
}

// CloseRest closes what the previous run handed over and this one did not
// take (a backend it runs no more, or with other options).
func (h *HandOver) CloseRest() {
	for typ, c := range h.held {
		c.b.Close()
		delete(h.held, typ)
	}
}
