package backends

import "github.com/weftnet/weft/mesh"

// Wrapper is a backend built around others: a dual stack (one backend per
// family), an IPv6-only network's backend, the tunnel source filter, a
// live switch (the config's backend and those it switches from), a
// WireGuard device stack. A wrapper keeps only what it intercepts; an
// optional capability of an inner backend is found through it with As.
//
// Unwrap returns mesh.Applier values, each a Backend, so that a wrapper
// in a package this one imports (wireguard.Stack) can name its parts.
type Wrapper interface {
	Unwrap() []mesh.Applier
}

// As finds capability T in b's stack of wrappers: b itself, then what it
// wraps, depth first in each wrapper's Unwrap order (a switch's primary,
// the config's backend, first; a dual stack's IPv4 half first). The value
// it returns is the backend that answers, so its type says which one.
//
// A capability a wrapper implements itself (it intercepts: a drop count
// summed over its parts, a delta split between them) is found on the
// wrapper, before anything it wraps.
func As[T any](b mesh.Applier) (T, bool) {
	if t, ok := b.(T); ok {
		return t, true
	}
	if w, ok := b.(Wrapper); ok {
		for _, inner := range w.Unwrap() {
			if t, ok := As[T](inner); ok {
				return t, true
			}
		}
	}
	var zero T
	return zero, false
}
