package wireguard

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Endpoint discovery (see lease.Sighting). Every host publishes where its
// device sees peers whose packets come from another endpoint than their
// leases name; from what all hosts publish, a host learns where each such
// peer is reached (its NAT's mapping) and where its own packets leave its
// NAT. Two hosts behind NATs that keep one mapping per source port then
// reach each other directly: each sends to the other's discovered
// endpoint, which opens its own NAT's mapping for the other's packets, and
// keepalives keep both open.

// discovery is what the hosts' sightings say, as a plan reads it.
type discovery struct {
	// peers are the endpoints peers are seen at, by lease key: the one
	// most hosts see (ties: the lowest), outside the overlay.
	peers map[string]netip.AddrPort
	// self is where the other hosts see this host; invalid when none
	// sees it elsewhere than its lease says.
	self netip.AddrPort
}

// discover tallies the sightings of d's leases (this host's own
// included). A sighting of an address inside the Network or PeersNetwork,
// or of a host by itself, is ignored: a host is never sent its own
// overlay's traffic to reach another.
func discover(d mesh.Desired) discovery {
	votes := map[string]map[netip.AddrPort]int{}
	tally := func(from string, seen []lease.Sighting) {
		for _, s := range seen {
			a := s.Endpoint.Addr()
			if s.Lease == from || d.Network.Contains(a) || d.IPv6Network.IsValid() && d.IPv6Network.Contains(a) ||
				d.PeersNetwork.IsValid() && d.PeersNetwork.Contains(a) {
				continue
			}
			if votes[s.Lease] == nil {
				votes[s.Lease] = map[netip.AddrPort]int{}
			}
			votes[s.Lease][s.Endpoint]++
		}
	}
	tally(d.Self.Key(), d.Self.Attrs.Seen)
	for _, p := range d.Peers {
		if !p.Standby {
			tally(p.Key, p.Seen)
		}
	}
	out := discovery{peers: make(map[string]netip.AddrPort, len(votes))}
	for key, v := range votes {
		var best netip.AddrPort
		for ep, n := range v {
			if !best.IsValid() || n > v[best] || n == v[best] && ep.Compare(best) < 0 {
				best = ep
			}
		}
		if key == d.Self.Key() {
			out.self = best
		} else {
			out.peers[key] = best
		}
	}
	return out
}

// changesSightings reports whether a delta changes what any host sees:
// the discovery must then be redone on the whole state.
func changesSightings(d mesh.Delta) bool {
	old := make(map[string][]lease.Sighting, len(d.Old))
	for _, p := range d.Old {
		old[p.Key] = p.Seen
	}
	for _, p := range d.New {
		if prev, ok := old[p.Key]; !slices.Equal(prev, p.Seen) || !ok && len(p.Seen) > 0 {
			return true
		}
		delete(old, p.Key)
	}
	for _, seen := range old {
		if len(seen) > 0 {
			return true
		}
	}
	return false
}

// sightings are the peers the device sees elsewhere than their leases
// say: a peer with a handshake within RejectAfter whose endpoint differs
// from the one its lease names (Advertised), sorted by lease key, at most
// lease.MaxSightings.
func sightings(have []PeerState, want []PeerSpec, now time.Time) []lease.Sighting {
	byKey := make(map[keys.Key]PeerState, len(have))
	for _, h := range have {
		byKey[h.PublicKey] = h
	}
	var out []lease.Sighting
	for _, w := range want {
		h, ok := byKey[w.PublicKey]
		if !ok || !w.Advertised.IsValid() || !h.Endpoint.IsValid() || h.Endpoint == w.Advertised ||
			h.LastHandshake.IsZero() || now.Sub(h.LastHandshake) >= RejectAfter || strings.HasPrefix(w.Lease, "peers/") {
			continue
		}
		out = append(out, lease.Sighting{Lease: w.Lease, Endpoint: h.Endpoint})
	}
	slices.SortFunc(out, func(a, b lease.Sighting) int { return strings.Compare(a.Lease, b.Lease) })
	if len(out) > lease.MaxSightings {
		out = out[:lease.MaxSightings]
	}
	return out
}
