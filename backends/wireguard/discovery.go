package wireguard

import (
	"bytes"
	"encoding/json"
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
}

// maxEager bounds the peers behind NAT this host configures eagerly and
// keeps open with keepalives (their own leases say they are behind NAT):
// the first by lease order; the others are configured for traffic only,
// and counted.
const maxEager = 256

// discover tallies the sightings of d's leases (this host's own
// included; see weight). A sighting of an address inside the Network or PeersNetwork,
// or of a host by itself, is ignored: a host is never sent its own
// overlay's traffic to reach another.
//
// Where this host itself is seen counts only from hosts it has a live
// session with (live; nil counts every host): a lease anyone wrote that
// sights this host elsewhere would make a public host think it is behind
// NAT, publish so, and leave the relays.
func discover(d mesh.Desired, live func(mesh.Peer) bool) discovery {
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
	named := namedEndpoints(d)
	tally := func(from string, seen []lease.Sighting, sighter func() bool) {
		for _, s := range seen {
			a := s.Endpoint.Addr()
			if s.Lease == from || d.Network.Contains(a) || d.IPv6Network.IsValid() && d.IPv6Network.Contains(a) ||
				d.PeersNetwork.IsValid() && d.PeersNetwork.Contains(a) || s.Lease == d.Self.Key() && !sighter() ||
				named[s.Lease].names(s.Endpoint) {
				continue
			}
			if votes[s.Lease] == nil {
				votes[s.Lease] = map[netip.AddrPort]int{}
			}
			votes[s.Lease][s.Endpoint] += weight(from)
		}
	}
	tally(d.Self.Key(), d.Self.Attrs.Seen(), func() bool { return true })
	for _, p := range d.Peers {
		if !p.Standby {
			tally(p.Key, p.Seen(), func() bool { return live == nil || live(p) })
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
	if out.self.IsValid() || claimsNATData(d.Self.Attrs.BackendData) {
		out.relays = chooseRelays(d)
	}
	return out
}

// namedEndpoint is what a lease says of where its host is reached: its
// addresses and its WireGuard port.
type namedEndpoint struct {
	ip, ip6 netip.Addr
	port    int
}

// names reports whether ep is where the lease says its host is: a host
// seen there is seen where it says it is, which says nothing of a NAT (a
// host whose address changed is seen at its new one before or after its
// lease says so, and must not take itself for one behind NAT).
func (n namedEndpoint) names(ep netip.AddrPort) bool {
	a := ep.Addr().Unmap()
	return n.port != 0 && int(ep.Port()) == n.port && (a == n.ip || n.ip6.IsValid() && a == n.ip6)
}

// namedEndpoints are the endpoints the leases of the sighted hosts (and
// this host's) name, by lease key; only sighted leases' data is decoded.
func namedEndpoints(d mesh.Desired) map[string]namedEndpoint {
	sighted := map[string]bool{}
	for _, s := range d.Self.Attrs.Seen() {
		sighted[s.Lease] = true
	}
	for _, p := range d.Peers {
		for _, s := range p.Seen() {
			sighted[s.Lease] = true
		}
	}
	port := func(data json.RawMessage) int {
		var bd BackendData
		if json.Unmarshal(data, &bd) != nil {
			return 0
		}
		return bd.Port
	}
	out := map[string]namedEndpoint{
		d.Self.Key(): {ip: d.Self.Attrs.PublicIP, ip6: d.Self.Attrs.PublicIPv6Addr(), port: port(d.Self.Attrs.BackendData)}}
	for _, p := range d.Peers {
		if sighted[p.Key] && p.Key != d.Self.Key() {
			out[p.Key] = namedEndpoint{ip: p.PublicIP, ip6: p.PublicIPv6(), port: port(p.BackendData)}
		}
	}
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
//
// Whether a host is behind NAT is what its own lease says (claimsNAT),
// never what others see of it: sightings are anyone's to write, and one
// that made a public host look NATed would take it out of the relays.
func chooseRelays(d mesh.Desired) map[string]string {
	self := d.Self.Key()
	mine := d.Self.Attrs.Reach()
	public := map[string]bool{}
	var behindNAT []mesh.Peer
	for _, p := range d.Peers {
		switch {
		case p.Standby:
		case claimsNAT(p):
			behindNAT = append(behindNAT, p)
		default:
			public[p.Key] = true
		}
	}
	relays := map[string]string{}
	for _, p := range behindNAT {
		if r := pairRelay(self, mine, p.Key, p.Reach(), public); r != "" {
			relays[p.Key] = r
		}
	}
	return relays
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
		if !ok || !w.Advertised.IsValid() || !h.Endpoint.IsValid() || h.Endpoint == w.Advertised || w.Relay != "" ||
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

// natClaim is how a lease says its host is behind NAT, in its
// BackendData.
var natClaim = []byte(`"NAT":true`)

// claimsNAT reports whether p's own lease says its host is behind NAT:
// told so (-behind-nat), or found out from what the other hosts see of it.
func claimsNAT(p mesh.Peer) bool { return claimsNATData(p.BackendData) }

// claimsNATData is claimsNAT of a lease's BackendData.
func claimsNATData(backendData json.RawMessage) bool {
	if !bytes.Contains(backendData, natClaim) { // most leases: no decoding
		return false
	}
	var data BackendData
	return json.Unmarshal(backendData, &data) == nil && data.NAT
}
