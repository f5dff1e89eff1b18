package wireguard

import (
	"cmp"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// PeerSpec is one WireGuard peer as weft wants it.
type PeerSpec struct {
	// Lease names the lease the peer comes from, for log lines.
	Lease      string
	PublicKey  keys.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
	PSK        *keys.Key
	// NAT says the peer's lease marks it behind NAT, or the hosts see it
	// behind one (discovery).
	NAT bool
	// Relay is the lease key of the host whose forwarder carries the
	// peer's ciphertext (Endpoint is its port for the pair); empty when
	// direct.
	Relay string
	// TrialBy is, while the peer's relay asks the pair to try its direct
	// path (TryDirect), that relay's lease key.
	TrialBy string
	// Advertised is the endpoint the peer's lease names, which Endpoint
	// replaces when the peer is seen elsewhere (discovery); what this
	// host's device sees against it is its sighting.
	Advertised netip.AddrPort
}

// PeerState is a peer as the device has it now.
type PeerState struct {
	PublicKey  keys.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
	Keepalive  time.Duration
	PSK        keys.Key // zero when none
	// LastHandshake is when the peer last completed a handshake; zero
	// when never.
	LastHandshake time.Time
}

// RejectAfter is WireGuard's reject-after time: a session older than this
// is dead, so a peer whose last handshake is older has no working path at
// the endpoint the device holds for it.
const RejectAfter = 180 * time.Second

// KeepRoamed returns want with the endpoint of each peer replaced by the
// one the device holds, where WireGuard roamed there (it follows a peer's
// authenticated packets to the address they really come from, behind NAT
// another than the lease names) and that is still right: the lease's
// endpoint is the one weft set last (lastLease; so the lease did not move
// since, or weft has no record yet), and the peer's last handshake is within RejectAfter of now. A
// lease that moves is followed; a roamed endpoint gone stale (no handshake
// for RejectAfter) goes back to the lease's, so a pair stuck on a stale
// port recovers (flannel-io/flannel#1770).
func KeepRoamed(want []PeerSpec, have []PeerState, lastLease map[keys.Key]netip.AddrPort, now time.Time) []PeerSpec {
	current := make(map[keys.Key]PeerState, len(have))
	for _, h := range have {
		current[h.PublicKey] = h
	}
	out := make([]PeerSpec, len(want))
	for i, w := range want {
		out[i] = w
		h, ok := current[w.PublicKey]
		if !ok || !h.Endpoint.IsValid() || h.Endpoint == w.Endpoint || w.Relay != "" {
			// A relayed peer is reached at its relay's port for the pair
			// and nowhere else: only the relay's forwarder sends its
			// datagrams on.
			continue
		}
		if !w.Endpoint.IsValid() {
			// An outside peer given no endpoint: where WireGuard found it
			// is all there is.
			out[i].Endpoint = h.Endpoint
			continue
		}
		// Without a record (weftd just started on a kernel device that
		// kept its peers) the lease is taken as unchanged: a roamed
		// endpoint with recent handshakes works, whatever the lease says.
		// What other hosts see of the peer (discovery) does not count as
		// a move: this host's own working path comes first (behind a NAT
		// that maps each destination anew, the others see other ports).
		if last, ok := lastLease[w.PublicKey]; (!ok || last == w.leaseEndpoint()) && !h.LastHandshake.IsZero() && now.Sub(h.LastHandshake) < RejectAfter {
			out[i].Endpoint = h.Endpoint
		}
	}
	return out
}

// leaseEndpoint is the endpoint the peer's lease names (Advertised), or
// the one it was given (an outside peer's, or its relay's port for a
// relayed peer: a pair that leaves its relay is then not held at the
// relay's port as if WireGuard had roamed there).
func (s PeerSpec) leaseEndpoint() netip.AddrPort {
	if s.Advertised.IsValid() && s.Relay == "" {
		return s.Advertised
	}
	return s.Endpoint
}

// Change is one per-peer delta. Remove drops the peer; otherwise the peer
// is created or updated with Spec (AllowedIPs replaced).
type Change struct {
	Remove    bool
	PublicKey keys.Key
	Spec      PeerSpec
}

// Plan derives the wanted peers from the desired state. A lease whose key
// is missing or invalid, equals this host's key, or equals another lease's
// key is skipped with a problem naming the lease; the rest are unaffected.
//
// Plan knows nothing of the hosts' sightings: a peer is reached where its
// lease says (weftctl's view; the backend plans with what it discovered).
func Plan(d mesh.Desired, self keys.Key, opts Options) ([]PeerSpec, []error) {
	out, problems, _ := plan(d, self, opts, discovery{})
	return out, problems
}

// plan is Plan with what the hosts' sightings say (found) that also
// returns which leases publish each key, so a delta can tell whether it
// touches a key two leases share.
func plan(d mesh.Desired, self keys.Key, opts Options, found discovery) ([]PeerSpec, []error, map[keys.Key][]string) {
	candidates, problems := candidates(d, self, opts, found)
	hostKeys := make(map[keys.Key]string, len(candidates))
	for _, c := range candidates {
		hostKeys[c.PublicKey] = c.Lease
	}
	outside, outsideProblems := outsidePeers(d, self, hostKeys, opts)
	candidates, problems = append(candidates, outside...), append(problems, outsideProblems...)
	holders := make(map[keys.Key][]string, len(candidates))
	for _, c := range candidates {
		holders[c.PublicKey] = append(holders[c.PublicKey], c.Lease)
	}
	out := make([]PeerSpec, 0, len(candidates))
	for _, c := range candidates {
		// WireGuard tells peers apart by key: two leases with one key
		// cannot both be peers, and picking one would be a guess.
		if others := holders[c.PublicKey]; len(others) > 1 {
			problems = append(problems, mesh.SkipPeer(c.Lease, "PublicKey is published by %d leases (%s); skipping them all",
				len(others), strings.Join(others, ", ")))
			continue
		}
		out = append(out, c)
	}
	return out, problems, holders
}

// outsidePeers are the specs of the outside peers (PeersNetwork): their
// address as the only allowed IP, the endpoint they were given (none: the
// peer reaches the hosts first and WireGuard learns it), configured even
// in the on-demand mode (their handshakes come from no lease's address).
// Each record is checked here as weftctl checks it before writing it, since
// anyone who can write to etcd can write one: a record that fails is
// skipped with its reason and the others are applied. A record carrying a
// host's key is skipped, not the host (hostKeys: key → lease); of two
// records claiming one address the older keeps it, since WireGuard would
// move the address to whichever it was given last.
func outsidePeers(d mesh.Desired, self keys.Key, hostKeys map[keys.Key]string, opts Options) ([]PeerSpec, []error) {
	var out []PeerSpec
	var problems []error
	records := slices.Clone(d.Outside)
	slices.SortStableFunc(records, func(a, b lease.OutsidePeer) int {
		if a.Created != b.Created {
			return cmp.Compare(a.Created, b.Created)
		}
		return strings.Compare(a.Name, b.Name)
	})
	taken := map[netip.Addr]string{}
	for _, o := range records {
		name := "peers/" + o.Name
		pub, err := keys.ParseKey(o.PublicKey)
		switch {
		case err != nil:
			problems = append(problems, mesh.SkipPeer(name, "PublicKey: %v", err))
			continue
		case pub == self:
			problems = append(problems, mesh.SkipPeer(name, "publishes this host's own public key"))
			continue
		case hostKeys[pub] != "":
			problems = append(problems, mesh.SkipPeer(name, "publishes the public key of host lease %s; the host keeps it", hostKeys[pub]))
			continue
		case !d.PeersNetwork.IsValid() || !d.PeersNetwork.Contains(o.Address.Addr()) || o.Address.Bits() != 32:
			problems = append(problems, mesh.SkipPeer(name, "Address %s is not a /32 of PeersNetwork %s", o.Address, d.PeersNetwork))
			continue
		case taken[o.Address.Addr()] != "":
			problems = append(problems, mesh.SkipPeer(name, "Address %s is outside peer %s's, written earlier", o.Address, taken[o.Address.Addr()]))
			continue
		case o.Keepalive < 0 || o.Keepalive > 65535:
			problems = append(problems, mesh.SkipPeer(name, "Keepalive %d is not between 0 and 65535 seconds", o.Keepalive))
			continue
		}
		if err := o.CheckEndpoint(); err != nil {
			problems = append(problems, mesh.SkipPeer(name, "%v", err))
			continue
		}
		taken[o.Address.Addr()] = o.Name
		out = append(out, PeerSpec{Lease: name, PublicKey: pub, Endpoint: o.Endpoint, AllowedIPs: []netip.Prefix{o.Address},
			Keepalive: time.Duration(o.Keepalive) * time.Second, PSK: opts.PSK, NAT: true})
	}
	return out, problems
}

// candidates checks each peer on its own: BackendData, key and port; a
// peer the hosts see behind NAT (found) is reached where it is seen.
func candidates(d mesh.Desired, self keys.Key, opts Options, found discovery) ([]PeerSpec, []error) {
	var problems []error
	var out []PeerSpec
	relayUsed := make(map[string]bool, len(found.relays))
	for _, r := range found.relays {
		relayUsed[r] = true
	}
	tables := map[string]relayTable{}
	for _, p := range d.Peers {
		var data BackendData
		if err := json.Unmarshal(p.BackendData, &data); err != nil {
			problems = append(problems, mesh.SkipPeer(p.Key, `BackendData is not wireguard's {"PublicKey","Port"}: %v`, err))
			continue
		}
		if relayUsed[p.Key] {
			tables[p.Key] = relayTable{at: p.PublicIP, ports: data.Relay}
		}
		pub, err := keys.ParseKey(data.PublicKey)
		switch {
		case err != nil:
			problems = append(problems, mesh.SkipPeer(p.Key, "PublicKey %q: %v", data.PublicKey, err))
			continue
		case pub == keys.Key{}:
			problems = append(problems, mesh.SkipPeer(p.Key, "PublicKey is all zeros, which no WireGuard private key gives"))
			continue
		case data.Port < 1 || data.Port > 65535:
			problems = append(problems, mesh.SkipPeer(p.Key, "Port %d is not a UDP port", data.Port))
			continue
		case pub == self:
			problems = append(problems, mesh.SkipPeer(p.Key, "publishes this host's own public key"))
			continue
		}
		spec := PeerSpec{Lease: p.Key, PublicKey: pub, Endpoint: netip.AddrPortFrom(p.PublicIP, uint16(data.Port)),
			AllowedIPs: []netip.Prefix{p.Subnet}, Keepalive: opts.PersistentKeepalive, PSK: opts.PSK, NAT: data.NAT}
		twin := sharesAddress(p, d.Self)
		if opts.direct(p.PublicIP) && !twin {
			spec.AllowedIPs = nil // a plain route carries it (DirectRoutes)
		}
		if opts.Mode != ModeSeparate && d.IPv6Network.IsValid() && p.IPv6Subnet().IsValid() {
			// One device for both families: the peer's IPv6 subnet too,
			// and its IPv6 endpoint when the Mode says so.
			spec.AllowedIPs = append(spec.AllowedIPs, p.IPv6Subnet()) // direct routing is IPv4's
			if opts.useIPv6(p.PublicIP, p.PublicIPv6()) {
				port := data.Port
				var data6 BackendData
				if json.Unmarshal(p.BackendV6Data(), &data6) == nil && data6.Port >= 1 && data6.Port <= 65535 {
					port = data6.Port
				}
				spec.Endpoint = netip.AddrPortFrom(p.PublicIPv6(), uint16(port))
			}
		}
		spec.Advertised = spec.Endpoint
		if twin {
			// Its lease's address is this host's own: it is reached only
			// where it is seen (below), through a relay, or where its own
			// handshakes come from.
			spec.Endpoint = netip.AddrPort{}
		}
		// Where the hosts see it is where it is reached, for a host whose
		// own lease says it is behind NAT (or that has this host's own
		// address): a public host is not moved by sightings, which anyone
		// who can write etcd can forge. A peer on this host's own network
		// is reached there as its lease says, without a trip through the
		// NAT.
		if ep, seen := found.peers[p.Key]; seen && (twin || data.NAT && !opts.onLocalNetwork(p.PublicIP)) {
			spec.Endpoint = ep
		}
		if data.NAT || twin || found.self.IsValid() {
			// A NAT on either side: the path is kept open, and each end
			// hears from the other often enough to know within seconds
			// when it stops (a relay gone, WeftReach), whatever longer
			// keepalive the config asks for: with 25 s, an idle direct
			// path would look dead between keepalives and the pair would
			// go back and forth between it and a relay.
			spec.Keepalive = min(cmp.Or(spec.Keepalive, pathKeepalive), pathKeepalive)
			if data.NAT && !found.self.IsValid() {
				// A public host sends a peer behind NAT keepalives more
				// often than the peer sends its own, so it is always the
				// one that sends on an idle path (WireGuard holds one end's
				// keepalives back while it hears the other's), and the
				// peer hears it: public hosts publish no WeftReach, so
				// the peer knows its relays are there only this way.
				spec.Keepalive = min(spec.Keepalive, leadKeepalive)
			}
		}
		if len(spec.AllowedIPs) > 0 {
			out = append(out, spec)
		}
	}
	return throughRelays(out, found.relays, tables, d.Self.Key()), problems
}

// DirectRoutes are the plain routes of the peers DirectRouting reaches
// without WireGuard: those on the external interface's own networks.
func DirectRoutes(d mesh.Desired, opts Options) []underlay.Route {
	var out []underlay.Route
	for _, p := range d.Peers {
		if opts.direct(p.PublicIP) && p.Subnet.IsValid() && !p.Standby && !sharesAddress(p, d.Self) {
			out = append(out, underlay.Route{Dst: p.Subnet, Via: p.PublicIP, Direct: true})
		}
	}
	return out
}

// state is the device's view of a peer set as spec says.
func (s PeerSpec) state() PeerState {
	st := PeerState{PublicKey: s.PublicKey, Endpoint: s.Endpoint, AllowedIPs: s.AllowedIPs, Keepalive: s.Keepalive}
	if s.PSK != nil {
		st.PSK = *s.PSK
	}
	return st
}

// Delta compares what the device has with what is wanted and returns only
// the changes: new peers, peers whose endpoint, allowed IPs, keepalive or
// PSK differ, and peers to remove (gone from the leases, key changed, or
// added by someone else). A peer already right is not touched.
func PeerChanges(have []PeerState, want []PeerSpec) []Change {
	current := make(map[keys.Key]PeerState, len(have))
	for _, h := range have {
		current[h.PublicKey] = h
	}
	var changes []Change
	wanted := make(map[keys.Key]bool, len(want))
	for _, w := range want {
		wanted[w.PublicKey] = true
		if h, ok := current[w.PublicKey]; ok && same(h, w) {
			continue
		}
		changes = append(changes, Change{PublicKey: w.PublicKey, Spec: w})
	}
	for _, h := range have {
		if !wanted[h.PublicKey] {
			changes = append(changes, Change{Remove: true, PublicKey: h.PublicKey})
		}
	}
	return changes
}

func same(h PeerState, w PeerSpec) bool {
	var psk keys.Key
	if w.PSK != nil {
		psk = *w.PSK
	}
	// The endpoint is compared too: a peer whose lease moved must be
	// followed. An endpoint WireGuard roamed to is kept by KeepRoamed
	// before this comparison.
	return h.Endpoint == w.Endpoint && h.Keepalive == w.Keepalive && h.PSK == psk &&
		slices.Equal(sortedPrefixes(h.AllowedIPs), sortedPrefixes(w.AllowedIPs))
}

func sortedPrefixes(p []netip.Prefix) []netip.Prefix {
	out := slices.Clone(p)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// peersToKick are the peers that need a handshake now: new ones (a fresh
// device after a restart has only new ones), and all of them when our own
// key changed; a peer without an endpoint (an outside peer) is left to
// start the handshake itself.
func peersToKick(have []PeerState, want []PeerSpec, changes []Change, ownKeyChanged bool) []PeerSpec {
	known := make(map[keys.Key]bool, len(have))
	for _, h := range have {
		known[h.PublicKey] = true
	}
	var out []PeerSpec
	if ownKeyChanged {
		for _, w := range want {
			if w.Endpoint.IsValid() {
				out = append(out, w)
			}
		}
		return out
	}
	for _, c := range changes {
		if !c.Remove && !known[c.PublicKey] && c.Spec.Endpoint.IsValid() {
			out = append(out, c.Spec)
		}
	}
	return out
}

// deltaStandsAlone reports whether the peers of a delta (before: their
// specs in the state last applied, after: in the new one) can be changed
// without looking at any other peer, given which leases published each key
// in the state last applied (holders). It cannot when a key published
// twice is involved: a duplicate that goes away may let its twin become a
// peer, and a key that arrives may already be published by another lease.
func deltaStandsAlone(before, after []PeerSpec, holders map[keys.Key][]string) bool {
	leaving := make(map[keys.Key]bool, len(before))
	for _, c := range before {
		if len(holders[c.PublicKey]) != 1 {
			return false
		}
		leaving[c.PublicKey] = true
	}
	arriving := make(map[keys.Key]bool, len(after))
	for _, c := range after {
		if arriving[c.PublicKey] || (len(holders[c.PublicKey]) > 0 && !leaving[c.PublicKey]) {
			return false
		}
		arriving[c.PublicKey] = true
	}
	return true
}

// MixedFamilies returns, when want reaches peers at endpoints of both
// families, the leases (or outside peers) of those at IPv6 endpoints; nil
// otherwise. wireguard-go's UDP bind (golang.zx2c4.com/wireguard/conn, as
// of v0.0.0-20260522) reuses one address buffer for both families, and
// an IPv6 send that follows an IPv4 send goes to a wrong address: on a
// userspace device these peers lose packets. Kernel WireGuard does not.
func MixedFamilies(want []PeerSpec) []string {
	var v4 bool
	var v6 []string
	for _, w := range want {
		switch {
		case !w.Endpoint.IsValid():
		case w.Endpoint.Addr().Is4():
			v4 = true
		default:
			v6 = append(v6, w.Lease)
		}
	}
	if !v4 {
		return nil
	}
	return v6
}

// sharesAddress reports whether peer p's lease names this host's own
// address (self's PublicIP, or PublicIPv6 on an IPv6-only network): a
// host behind a NAT with the same private address at another site. mesh
// keeps such a lease as a peer on wireguard alone.
func sharesAddress(p mesh.Peer, self lease.Lease) bool {
	if p.PublicIP.IsValid() && !p.PublicIP.IsUnspecified() {
		return p.PublicIP == self.Attrs.PublicIP
	}
	return p.PublicIPv6().IsValid() && p.PublicIPv6() == self.Attrs.PublicIPv6Addr()
}
