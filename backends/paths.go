package backends

import (
	"fmt"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Path is how this host's traffic reaches one peer: the data path that
// carries it, whether that path encrypts it, and, when it does not, why.
type Path struct {
	// Name is the backend's Type, or "direct" for a wireguard peer that
	// DirectRouting reaches by a plain route.
	Name      string
	Encrypted bool
	// Why says why the peer's traffic is in clear ("" when encrypted).
	Why string
}

// PathDirect is the Path.Name of a peer reached by DirectRouting.
const PathDirect = "direct"

// PathRule tells each peer's path on a host: the config's backend, less
// wireguard's DirectRouting peers (on the external interface's own
// networks), which go in clear.
type PathRule struct {
	kind   Kind
	direct bool
	ext    underlay.ExternalInterface
}

// NewPathRule is the rule of a host on cfg's network with external
// interface ext.
func NewPathRule(cfg *lease.Config, ext underlay.ExternalInterface) PathRule {
	r := PathRule{kind: KindOf(cfg), ext: ext}
	if r.kind.Name == WireGuard {
		opts, err := wireguard.ParseOptions(cfg.Backend.Raw)
		r.direct = err == nil && opts.DirectRouting
	}
	return r
}

// Of is p's path: the config's backend, or during a switch the one that
// carries p (mesh.Peer.Path).
func (r PathRule) Of(p mesh.Peer) Path {
	if p.Path != "" && p.Path != r.kind.Name {
		if k, ok := Lookup(p.Path); ok {
			r = PathRule{kind: k, ext: r.ext}
		}
	}
	switch {
	case r.kind.Encrypted && r.direct && r.ext.OnLink(p.PublicIP):
		return Path{Name: PathDirect, Why: fmt.Sprintf("DirectRouting: its PublicIP %s is on %s's network, routed without WireGuard", p.PublicIP, r.ext.Name)}
	case r.kind.Encrypted:
		return Path{Name: r.kind.Name, Encrypted: true}
	}
	return Path{Name: r.kind.Name, Why: fmt.Sprintf("its lease names the %s backend, which does not encrypt", r.kind.Name)}
}
