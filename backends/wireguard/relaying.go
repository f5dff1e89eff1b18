package wireguard

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/weftnet/weft/backends/wireguard/relay"
	"github.com/weftnet/weft/mesh"
)

// Relays forward ciphertext. Two hosts behind NAT that reach no direct
// path to each other are still WireGuard peers of each other: each sets
// the other's endpoint to a port the relay (a public host both reach,
// chooseRelays) runs for the pair, and the relay's forwarder (package
// relay) sends each end's datagrams on to the other as they are. The
// relay publishes the pair's port in its lease (BackendData's Relay); it
// works out which pairs chose it the way the ends do, from their leases
// (relayedPairs), so the three agree without talking. A pair whose relay
// has published no port yet stays direct meanwhile.

// relayPortOffset places a relay's pair ports above its WireGuard port
// (and clear of ListenPortV6's default, ListenPort+1).
const relayPortOffset = 10

// relayTable is what a relay's lease publishes of its pairs: its address
// and each pair's port, as decoded with its BackendData.
type relayTable struct {
	at    netip.Addr
	ports []RelayPort
}

// endpoint is where this relay forwards the pair of a and b: its address
// and the port its lease names for them. Only its first relay.MaxPairs
// entries are read, and the address must be one a host reaches over IPv4
// or IPv6 (a lease's PublicIP is).
func (t relayTable) endpoint(a, b string) (netip.AddrPort, bool) {
	rp, ok := t.entry(orderedPair(a, b))
	if !ok || rp.TryDirect || rp.Port < 1 || rp.Port > 65535 || !t.at.IsValid() || t.at.IsUnspecified() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(t.at, uint16(rp.Port)), true
}

// entry is the table's entry for pair, among its first relay.MaxPairs (a
// relay publishes one per pair; the first counts).
func (t relayTable) entry(pair [2]string) (RelayPort, bool) {
	for _, rp := range t.ports[:min(len(t.ports), relay.MaxPairs)] {
		if rp.Pair == pair {
			return rp, true
		}
	}
	return RelayPort{}, false
}

// trialEndpoint is, when this relay asks the pair of self and peer to try
// its direct path, where it sees peer (a unicast IPv4 or IPv6 address
// with a port).
func (t relayTable) trialEndpoint(self, peer string) (netip.AddrPort, bool) {
	pair := orderedPair(self, peer)
	rp, ok := t.entry(pair)
	if !ok || !rp.TryDirect || len(rp.At) != 2 {
		return netip.AddrPort{}, false
	}
	ep := rp.At[slices.Index(pair[:], peer)]
	if a := ep.Addr(); ep.Port() == 0 || !a.IsGlobalUnicast() || a.Zone() != "" || a.Is4In6() {
		return netip.AddrPort{}, false
	}
	return ep, true
}

// orderedPair is two lease keys in order: how a pair is named.
func orderedPair(a, b string) [2]string {
	if b < a {
		a, b = b, a
	}
	return [2]string{a, b}
}

// throughRelays points each relayed peer at its relay's port for the
// pair: the relay forwards the pair's ciphertext, and the peer keeps its AllowedIPs
// (this host's session is with the peer itself, never with the relay).
// A pair whose relay has not published a port for it stays direct.
func throughRelays(specs []PeerSpec, relays map[string]string, tables map[string]relayTable, self string) []PeerSpec {
	if len(relays) == 0 {
		return specs
	}
	for i, s := range specs {
		r, ok := relays[s.Lease]
		if !ok {
			continue
		}
		if ep, ok := tables[r].endpoint(self, s.Lease); ok {
			specs[i].Endpoint, specs[i].Relay = ep, r
		} else if ep, ok := tables[r].trialEndpoint(self, s.Lease); ok {
			// The relay asks the pair to try direct, where it sees the
			// peer: both ends read the one lease, so they switch, and
			// send to each other's mapping, at once.
			specs[i].Endpoint, specs[i].TrialBy = ep, r
		}
	}
	return specs
}

// relayedPairs are the pairs of hosts behind NAT that chose this host
// as their relay, by what their leases say: the same choice each end
// makes (chooseRelays), made from the relay's side. A host behind NAT
// relays for no one. peers are the planned peers, which give each end's
// key; an end this host has no valid peer for is no pair of its.
func relayedPairs(d mesh.Desired, peers []PeerSpec) []relay.Pair {
	self := d.Self.Key()
	if claimsNATData(d.Self.Attrs.BackendData) {
		return nil
	}
	public := map[string]bool{self: true}
	var ends []mesh.Peer
	for _, p := range d.Peers {
		switch {
		case p.Standby:
		case !claimsNAT(p):
			public[p.Key] = true
		case slices.Contains(p.Reach(), self):
			ends = append(ends, p)
		}
	}
	if len(ends) < 2 {
		return nil
	}
	byLease := make(map[string]PeerSpec, len(peers))
	for _, s := range peers {
		byLease[s.Lease] = s
	}
	var out []relay.Pair
	for i, a := range ends {
		for _, b := range ends[i+1:] {
			if pairRelay(a.Key, a.Reach(), b.Key, b.Reach(), public) != self {
				continue
			}
			sa, okA := byLease[a.Key]
			sb, okB := byLease[b.Key]
			if !okA || !okB {
				continue
			}
			pair := relay.Pair{{Lease: sa.Lease, Key: sa.PublicKey}, {Lease: sb.Lease, Key: sb.PublicKey}}
			if sb.Lease < sa.Lease {
				pair[0], pair[1] = pair[1], pair[0]
			}
			out = append(out, pair)
		}
	}
	slices.SortFunc(out, func(x, y relay.Pair) int {
		return cmp.Or(cmp.Compare(x[0].Lease, y[0].Lease), cmp.Compare(x[1].Lease, y[1].Lease))
	})
	return out
}

// pairRelay is the relay of the pair a, b (both behind NAT), from what
// each reaches: none when each reaches the other (they go direct); else
// the lowest lease key among the public hosts both reach; none when they
// share none.
func pairRelay(a string, reachA []string, b string, reachB []string, public map[string]bool) string {
	if slices.Contains(reachA, b) && slices.Contains(reachB, a) {
		return ""
	}
	best := ""
	for _, r := range reachA {
		if public[r] && r != a && r != b && slices.Contains(reachB, r) && (best == "" || r < best) {
			best = r
		}
	}
	return best
}

// relayPorts are the pairs a forwarder serves as a lease publishes them,
// in pair order.
func relayPorts(served map[relay.Pair]uint16) []RelayPort {
	out := make([]RelayPort, 0, len(served))
	for p, port := range served {
		out = append(out, RelayPort{Pair: [2]string{p[0].Lease, p[1].Lease}, Port: int(port)})
	}
	slices.SortFunc(out, func(x, y RelayPort) int {
		return cmp.Or(cmp.Compare(x.Pair[0], y.Pair[0]), cmp.Compare(x.Pair[1], y.Pair[1]))
	})
	return out
}

// setRelaying makes this host's forwarder serve pairs on its address at
// (its lease's PublicIP), and signals DiscoveryChanged when the ports it
// publishes change, so its lease names them at once (b.mu held).
func (b *Backend) setRelaying(pairs []relay.Pair, at netip.Addr) {
	if len(pairs) == 0 && b.relaying.fwd == nil {
		return
	}
	if b.relaying.fwd != nil && b.relaying.fwd.Addr() != at {
		b.relaying.fwd.Close()
		b.relaying.fwd = nil
	}
	if b.relaying.fwd == nil {
		b.relaying.fwd = relay.New(at, uint16(b.cfg.opts.ListenPort+relayPortOffset), b.log)
	}
	served, err := b.relaying.fwd.Set(pairs)
	if err != nil {
		b.log.Warn("cannot relay some pairs; they stay direct", "err", err)
	}
	b.relaying.served = served
	b.publishRelaying(time.Now())
}

// publishRelaying sets the ports this host's lease publishes, with each
// pair's TryDirect, and signals DiscoveryChanged when they change (b.mu
// held).
func (b *Backend) publishRelaying(now time.Time) {
	var ends map[relay.Pair][2]netip.AddrPort
	if b.relaying.fwd != nil {
		ends = b.relaying.fwd.Ends()
	}
	ports := relayPorts(b.relaying.served)
	b.relaying.trials = tryDirect(ports, ends, b.relaying.seenAt, b.relaying.trials, now)
	for i := range ports {
		t := b.relaying.trials[ports[i].Pair]
		ports[i].TryDirect = !t.since.IsZero() && now.Sub(t.since) < trialFor
		if ports[i].TryDirect {
			ports[i].At = t.at[:]
		}
		if ports[i].TryDirect && !slices.ContainsFunc(b.relaying.ports, func(p RelayPort) bool { return p.Pair == ports[i].Pair && p.TryDirect }) {
			b.log.Info("a relayed pair's NATs keep ports: asking it to try its direct path", "ends", ports[i].Pair, "at", t.at, "for", trialFor)
		}
	}
	if !slices.EqualFunc(ports, b.relaying.ports, func(x, y RelayPort) bool {
		return x.Pair == y.Pair && x.Port == y.Port && x.TryDirect == y.TryDirect && slices.Equal(x.At, y.At)
	}) {
		b.relaying.ports = ports
		b.found.signal()
	}
}

// trialFor is how long a relayed pair tries its direct path when its
// relay asks it to: reach must be published by both ends within it
// (reachHold, a few keepalives, and the leases' round trips, slower on
// a loaded host); else the pair comes back through the relay and is not
// asked again for trialRetry, or until an end's mapping changes.
const (
	trialFor   = 20 * time.Second
	trialRetry = 10 * time.Minute
)

// trial is a relayed pair's try of its direct path: the ends' addresses
// at the relay's port when it began, and when.
type trial struct {
	at    [2]netip.AddrPort
	since time.Time
}

// tryDirect decides the pairs asked to try their direct path: a pair
// whose two ends are seen at its port (ends) from the address and port
// the relay's own WireGuard device has them at (seenAt: a NAT that keeps
// one mapping per source port) begins a trial, once for those addresses.
// It returns the trials, the ended ones kept so they are not begun again.
func tryDirect(ports []RelayPort, ends map[relay.Pair][2]netip.AddrPort, seenAt map[string]netip.AddrPort,
	trials map[[2]string]trial, now time.Time) map[[2]string]trial {
	out := make(map[[2]string]trial, len(ports))
	byNames := make(map[[2]string][2]netip.AddrPort, len(ends))
	for p, at := range ends {
		byNames[[2]string{p[0].Lease, p[1].Lease}] = at
	}
	for _, rp := range ports {
		at := byNames[rp.Pair]
		kept := at[0].IsValid() && at[1].IsValid() && seenAt[rp.Pair[0]] == at[0] && seenAt[rp.Pair[1]] == at[1]
		t, ok := trials[rp.Pair]
		switch {
		case ok && t.at == at && now.Sub(t.since) < trialRetry:
			out[rp.Pair] = t // under way or over: not begun again yet
		case kept:
			out[rp.Pair] = trial{at: at, since: now}
		}
	}
	return out
}

// relayingState is this host's forwarder, when it relays, the pairs it
// serves and the ports its lease publishes.
type relayingState struct {
	fwd    *relay.Forwarder
	served map[relay.Pair]uint16
	ports  []RelayPort
	// seenAt are where this host's device has each peer (lease key), at
	// the last observation.
	seenAt map[string]netip.AddrPort
	trials map[[2]string]trial
}

// Relaying is what this host does as a relay: the pairs it forwards for
// (as its lease publishes them) and what its forwarder counted.
type Relaying struct {
	Pairs    []RelayPort
	Counters relay.Counters
}

// Relaying says what this host does as a relay (zero when it never
// relayed).
func (b *Backend) Relaying() Relaying {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.relaying.fwd == nil {
		return Relaying{}
	}
	return Relaying{Pairs: slices.Clone(b.relaying.ports), Counters: b.relaying.fwd.Counters()}
}
