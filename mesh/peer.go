package mesh

import (
	"encoding/json"
	"net/netip"

	"github.com/weftnet/weft/lease"
)

// Peer is another host this host must reach: its subnet lives behind its
// PublicIP, and BackendData says how (VTEP MAC, WireGuard key).
type Peer struct {
	// Key is the lease key, for log lines that name the peer.
	Key         string
	Subnet      netip.Prefix
	PublicIP    netip.Addr
	BackendType string
	BackendData json.RawMessage
	// Path is the backend this host reaches the peer by (Path): the
	// network's Backend.Type but during a switch, when it may be one this
	// host still runs for peers that have not switched.
	Path string
	// Created is the store revision that created the peer's lease: of two
	// peers that claim the same thing (a VTEP MAC), the older one keeps it.
	Created int64
	// Standby marks a copy of the peer for a backend that is not its path
	// yet (see Alternatives), which prepares it there (keys, neighbours)
	// without routing to it.
	Standby bool
	// more is what only some peers have, nil for the others (see
	// peerMore). It is shared by copies of the Peer, so it is never
	// changed in place: the With methods give a Peer with a new one.
	more *peerMore
}

// peerMore holds a peer's fields that most peers leave empty: a Peer is
// kept for every lease, and these were half of its 296 bytes (7 MB at
// 50,000 leases) while an IPv4 network's peers outside a switch and
// behind no NAT have none of them.
type peerMore struct {
	ipv6Subnet    netip.Prefix
	publicIPv6    netip.Addr
	backendV6Data json.RawMessage
	alternatives  []lease.PathAttrs
	seen          []lease.Sighting
	reach         []string
}

func (m *peerMore) empty() bool {
	return !m.ipv6Subnet.IsValid() && !m.publicIPv6.IsValid() && len(m.backendV6Data) == 0 &&
		len(m.alternatives) == 0 && len(m.seen) == 0 && len(m.reach) == 0
}

// change sets p.more to a copy of it that set has changed, or nil when
// nothing is left in it.
func (p *Peer) change(set func(*peerMore)) {
	var m peerMore
	if p.more != nil {
		m = *p.more
	}
	set(&m)
	if m.empty() {
		p.more = nil
		return
	}
	p.more = &m
}

// IPv6Subnet is the peer's IPv6 subnet on a dual-stack network, invalid
// when it has none (an IPv4-only lease).
func (p Peer) IPv6Subnet() netip.Prefix {
	if p.more == nil {
		return netip.Prefix{}
	}
	return p.more.ipv6Subnet
}

// PublicIPv6 is where the peer's IPv6 traffic goes on a dual-stack
// network, invalid when its lease publishes no IPv6 address.
func (p Peer) PublicIPv6() netip.Addr {
	if p.more == nil {
		return netip.Addr{}
	}
	return p.more.publicIPv6
}

// BackendV6Data is the backend's data for the peer's IPv6 half.
func (p Peer) BackendV6Data() json.RawMessage {
	if p.more == nil {
		return nil
	}
	return p.more.backendV6Data
}

// WithIPv6 is p with its IPv6 half: subnet, address and backend data.
func (p Peer) WithIPv6(subnet netip.Prefix, publicIP netip.Addr, data json.RawMessage) Peer {
	p.change(func(m *peerMore) { m.ipv6Subnet, m.publicIPv6, m.backendV6Data = subnet, publicIP, data })
	return p
}

// Alternatives are the other backends the peer's host speaks during a
// switch, with their data (types as Path names them).
func (p Peer) Alternatives() []lease.PathAttrs {
	if p.more == nil {
		return nil
	}
	return p.more.alternatives
}

// WithAlternatives is p with these Alternatives.
func (p Peer) WithAlternatives(alternatives []lease.PathAttrs) Peer {
	p.change(func(m *peerMore) { m.alternatives = alternatives })
	return p
}

// Seen is what the peer's host sees of other hosts (its lease's
// WeftSeen): where their packets come from, when not where their leases
// say. A change of it changes what this host knows of others, so a
// backend that reads it applies such a change whole.
func (p Peer) Seen() []lease.Sighting {
	if p.more == nil {
		return nil
	}
	return p.more.seen
}

// Reach are the peers the peer's host, behind NAT, has a live direct path
// to (its lease's WeftReach); read like Seen.
func (p Peer) Reach() []string {
	if p.more == nil {
		return nil
	}
	return p.more.reach
}

// WithSightings is p with these Seen and Reach.
func (p Peer) WithSightings(seen []lease.Sighting, reach []string) Peer {
	p.change(func(m *peerMore) { m.seen, m.reach = seen, reach })
	return p
}
