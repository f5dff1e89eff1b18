package wireguard

import (
	"maps"
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
	// relays are, for this host behind NAT, the peers behind NAT it
	// reaches through a relay, by lease key, and the relay's lease key
	// (chooseRelays).
	relays map[string]string
	// eager are the peers seen behind NAT that this host configures
	// eagerly and keeps open with keepalives: at most maxEager of them,
	// the first by lease key; capped counts the others, which are sent to
	// where they are seen but wait for traffic like any on-demand peer.
	// Sightings are anyone's to write: without the bound, one lease per
	// 64 peers would hold an on-demand host at its fully configured size.
	eager  map[string]bool
	capped int
}

// maxEager bounds the peers sightings alone make eager (discovery.eager).
const maxEager = 256

// discover tallies the sightings of d's leases (this host's own
// included; see weight). A sighting of an address inside the Network or PeersNetwork,
// or of a host by itself, is ignored: a host is never sent its own
// overlay's traffic to reach another.
func discover(d mesh.Desired) discovery {
	votes := map[string]map[netip.AddrPort]int{}
	// A sighting counts once; one by this host itself, or by a host it
	// reaches now (its WeftReach), counts twice: a host that went away
	// leaves its last sightings in its lease, and a NAT's mapping may have
	// changed since.
	weight := func(from string) int {
		if from == d.Self.Key() || slices.Contains(d.Self.Attrs.Reach(), from) {
			return 2
		}
		return 1
	}
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
			votes[s.Lease][s.Endpoint] += weight(from)
		}
	}
	tally(d.Self.Key(), d.Self.Attrs.Seen())
	for _, p := range d.Peers {
		if !p.Standby {
			tally(p.Key, p.Seen())
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
	if out.self.IsValid() {
		out.relays = chooseRelays(d, out)
	}
	seen := slices.Sorted(maps.Keys(out.peers))
	out.eager = make(map[string]bool, min(len(seen), maxEager))
	for _, key := range seen[:min(len(seen), maxEager)] {
		out.eager[key] = true
	}
	out.capped = len(seen) - len(out.eager)
	return out
}

// chooseRelays decides, for this host behind NAT, how it reaches each
// peer behind NAT, from what both publish, so both ends decide alike at
// once (WireGuard drops a packet whose inner source is not among the
// sending peer's AllowedIPs: both must send the pair's traffic through
// the same relay at the same moment, and neither may go by its own timer).
// The pair goes direct when each names the other in its WeftReach; else
// through the relay both name whose lease key is lowest among the hosts
// not behind NAT; with none, direct (and it is tried, kept open, until
// it works).
func chooseRelays(d mesh.Desired, found discovery) map[string]string {
	self := d.Self.Key()
	mine := d.Self.Attrs.Reach()
	var candidates []string
	reachOf := make(map[string][]string, len(d.Peers))
	for _, p := range d.Peers {
		if p.Standby {
			continue
		}
		reachOf[p.Key] = p.Reach()
		if _, behindNAT := found.peers[p.Key]; !behindNAT {
			candidates = append(candidates, p.Key)
		}
	}
	slices.Sort(candidates)
	relays := map[string]string{}
	for peer := range found.peers {
		theirs, ok := reachOf[peer]
		if !ok || slices.Contains(mine, peer) && slices.Contains(theirs, self) {
			continue
		}
		for _, r := range candidates {
			if slices.Contains(mine, r) && slices.Contains(theirs, r) {
				relays[peer] = r
				break
			}
		}
	}
	return relays
}

// relay moves the AllowedIPs of each relayed peer to its relay's spec:
// the relay forwards the pair's traffic, each hop in its own WireGuard
// session. The relayed peer stays on the device without AllowedIPs, with
// its endpoint and keepalive, so a direct path is found when one opens.
func relay(specs []PeerSpec, relays map[string]string) []PeerSpec {
	if len(relays) == 0 {
		return specs
	}
	at := make(map[string]int, len(specs))
	for i, s := range specs {
		at[s.Lease] = i
	}
	for i, s := range specs {
		r, ok := relays[s.Lease]
		j, found := at[r]
		if !ok || !found {
			continue
		}
		specs[j].AllowedIPs = append(slices.Clone(specs[j].AllowedIPs), s.AllowedIPs...)
		specs[i].AllowedIPs, specs[i].Relay = nil, r
	}
	return specs
}

// changesSightings reports whether a delta changes what any host sees or
// reaches: the discovery must then be redone on the whole state.
func changesSightings(d mesh.Delta) bool {
	old := make(map[string]mesh.Peer, len(d.Old))
	for _, p := range d.Old {
		old[p.Key] = p
	}
	for _, p := range d.New {
		prev, ok := old[p.Key]
		if !slices.Equal(prev.Seen(), p.Seen()) || !slices.Equal(prev.Reach(), p.Reach()) || !ok && (len(p.Seen()) > 0 || len(p.Reach()) > 0) {
			return true
		}
		delete(old, p.Key)
	}
	for _, p := range old {
		if len(p.Seen()) > 0 || len(p.Reach()) > 0 {
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
