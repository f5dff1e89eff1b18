package liveswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Switching is a host's data path while the network switches Backend.Type
// under it: the config's backend (primary) and the backends it ran before
// (legacy), which it keeps for the peers that do not speak the new one
// yet (hosts not switched, flannel hosts). Each peer is carried by the
// backend of its path (mesh.Peer.Path); a peer whose path moves is added
// to its new backend before it leaves its old one, so its traffic always
// has a way. A legacy backend no peer needs any more is retired.
type Switching struct {
	primary     backends.Backend
	primaryType string
	legacy      []typedBackend
	// ready are backends already set up (handed over running by the
	// previous run of a live switch): Setup leaves them be.
	ready map[string]bool
}

// SetReady names the backends already set up.
func (s *Switching) SetReady(ready map[string]bool) { s.ready = ready }

// typedBackend is a backend and its Type.
type typedBackend struct {
	typ string
	b   backends.Backend
}

// NewSwitching runs primary (the config's Backend.Type) with legacy
// backends beside it, keyed by Type (the oldest last).
func NewSwitching(primaryType string, primary backends.Backend, legacy []string, byType map[string]backends.Backend) *Switching {
	s := &Switching{primary: primary, primaryType: primaryType}
	for _, typ := range legacy {
		s.legacy = append(s.legacy, typedBackend{typ, byType[typ]})
	}
	s.shareNetworkRoute()
	return s
}

// peerRouter is a backend that routes the whole Network through its
// device unless told to route its peers one by one (udp).
type peerRouter interface {
	SetPeerRoutes(on bool)
}

// shareNetworkRoute has a backend that would route the whole Network
// (udp) route its peers one by one while backends.WireGuard, which routes the
// Network through its own device, runs beside it.
func (s *Switching) shareNetworkRoute() {
	wg := slices.ContainsFunc(s.all(), func(t typedBackend) bool { return t.typ == backends.WireGuard })
	for _, t := range s.all() {
		if r, ok := t.b.(peerRouter); ok {
			r.SetPeerRoutes(wg && t.typ != backends.WireGuard)
		}
	}
}

// all is every backend, the primary first.
func (s *Switching) all() []typedBackend {
	return append([]typedBackend{{s.primaryType, s.primary}}, s.legacy...)
}

// Backends are the backends running, by Type.
func (s *Switching) Backends() map[string]backends.Backend {
	out := map[string]backends.Backend{}
	for _, t := range s.all() {
		out[t.typ] = t.b
	}
	return out
}

// Legacy are the Types of the legacy backends still running.
func (s *Switching) Legacy() []string {
	out := make([]string, 0, len(s.legacy))
	for _, l := range s.legacy {
		out = append(out, l.typ)
	}
	return out
}

// Paths are what each backend publishes, the primary's first: the lease
// names one of them as its BackendType and the others in WeftAlso.
func (s *Switching) Paths() []lease.PathAttrs {
	var out []lease.PathAttrs
	for _, t := range s.all() {
		p := lease.PathAttrs{BackendType: t.typ, BackendData: t.b.BackendData()}
		if ds, ok := backends.As[backends.DualStack](t.b); ok {
			p.BackendV6Data = ds.BackendV6Data()
		}
		out = append(out, p)
	}
	return out
}

// Setup sets up (or adopts) every backend.
func (s *Switching) Setup(ctx context.Context) error {
	var errs []error
	for _, t := range s.all() {
		if s.ready[t.typ] {
			continue
		}
		if err := t.b.Setup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.typ, err))
		}
	}
	return errors.Join(errs...)
}

// BackendData is the primary's.
func (s *Switching) BackendData() json.RawMessage { return s.primary.BackendData() }

// MTU is the primary's.
func (s *Switching) MTU() int { return s.primary.MTU() }

// part is want with only the peers whose path is typ, and, on standby,
// the peers that speak typ but are carried by another backend: the
// primary prepares them, so they can answer there the moment they move;
// a legacy backend keeps them, so what a peer still sends that way (its
// own move comes after its settle time) is taken until it is retired.
// The primary keeps the outside peers.
func part(want mesh.Desired, typ string, primary bool) mesh.Desired {
	out := want
	out.Peers = nil
	for _, p := range want.Peers {
		if p, ok := peerFor(p, typ); ok {
			out.Peers = append(out.Peers, p)
		}
	}
	if !primary {
		out.Outside, out.PeersNetwork = nil, netip.Prefix{}
	}
	return out
}

// peerFor is p as the backend of type typ sees it: itself when typ is its
// path; a standby copy with typ's data when p's host speaks typ too.
func peerFor(p mesh.Peer, typ string) (mesh.Peer, bool) {
	if p.Path == typ {
		return p, true
	}
	for _, a := range p.Alternatives() {
		if a.BackendType == typ {
			s := p
			s.BackendType, s.BackendData, s.Path, s.Standby = a.BackendType, a.BackendData, typ, true
			s = s.WithIPv6(s.IPv6Subnet(), s.PublicIPv6(), a.BackendV6Data)
			return s, true
		}
	}
	return p, false
}

// Apply applies each backend its peers, the primary first: a peer that
// moved to it is reached there before its old backend lets go of it.
func (s *Switching) Apply(ctx context.Context, want mesh.Desired) error {
	var errs []error
	for i, t := range s.all() {
		if err := t.b.Apply(ctx, part(want, t.typ, i == 0)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t.typ, err))
		}
	}
	return errors.Join(errs...)
}

// ApplyDelta applies the delta in two rounds: every backend first gets
// the peers that come to it (and its own peers' changes), then the peers
// that left it for another path or for good, so a peer moving between
// backends always has one. A backend that cannot take a delta asks for a
// whole apply.
func (s *Switching) ApplyDelta(ctx context.Context, delta mesh.Delta) error {
	// newPath: the backends each peer of the delta is on afterwards (its
	// path's, and those it is on standby in).
	newPath := make(map[string]map[string]bool, len(delta.New))
	for _, p := range delta.New {
		newPath[p.Key] = map[string]bool{}
		for _, t := range s.all() {
			if _, ok := peerFor(p, t.typ); ok {
				newPath[p.Key][t.typ] = true
			}
		}
	}
	var errs []error
	whole := false
	for round := range 2 {
		for _, t := range s.all() {
			d := mesh.Delta{Network: delta.Network, IPv6Network: delta.IPv6Network, Self: delta.Self}
			for _, p := range delta.Old {
				p, mine := peerFor(p, t.typ)
				_, stays := newPath[p.Key][t.typ]
				if mine && (round == 0) == stays {
					d.Old = append(d.Old, p)
				}
			}
			if round == 0 {
				for _, p := range delta.New {
					if p, mine := peerFor(p, t.typ); mine {
						d.New = append(d.New, p)
					}
				}
			}
			if len(d.Old) == 0 && len(d.New) == 0 {
				continue
			}
			da, ok := t.b.(mesh.DeltaApplier)
			if !ok {
				return mesh.ErrWholeApply
			}
			err := da.ApplyDelta(ctx, d)
			whole = whole || errors.Is(err, mesh.ErrWholeApply)
			if err != nil && !errors.Is(err, mesh.ErrWholeApply) {
				errs = append(errs, fmt.Errorf("%s: %w", t.typ, err))
			}
		}
	}
	if whole {
		return mesh.ErrWholeApply
	}
	return errors.Join(errs...)
}

// Retire removes a legacy backend's data path: no peer needs it any more.
func (s *Switching) Retire(ctx context.Context, typ string) error {
	for i, l := range s.legacy {
		if l.typ != typ {
			continue
		}
		s.legacy = append(s.legacy[:i:i], s.legacy[i+1:]...)
		err := l.b.Cleanup(ctx)
		l.b.Close()
		s.shareNetworkRoute()
		return err
	}
	return nil
}

// Cleanup removes every backend's data path.
func (s *Switching) Cleanup(ctx context.Context) error {
	var errs []error
	for _, t := range s.all() {
		errs = append(errs, t.b.Cleanup(ctx))
	}
	return errors.Join(errs...)
}

// Close closes every backend, leaving their data paths.
func (s *Switching) Close() error {
	var errs []error
	for _, t := range s.all() {
		errs = append(errs, t.b.Close())
	}
	return errors.Join(errs...)
}

// Unwrap is every backend, the primary first.
func (s *Switching) Unwrap() []mesh.Applier {
	out := make([]mesh.Applier, 0, 1+len(s.legacy))
	for _, t := range s.all() {
		out = append(out, t.b)
	}
	return out
}

var (
	_ mesh.DeltaApplier = (*Switching)(nil)
	_ backends.Wrapper  = (*Switching)(nil)
)
