package wireguard

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/tai64n"

	"github.com/weftnet/weft/keys"
)

// On-demand peers (userspace WireGuard only). wireguard-go holds about 50
// KB per configured peer (two 1,024-slot queues, two goroutines), so a
// host on a cluster of 10,000 would hold some 600 MB for peers it mostly
// never talks to. In the on-demand mode weft keeps every peer in its own
// table (onDemand) and configures one on the device only when traffic
// needs it: a packet read from the TUN for the peer's subnet (tunWrapper),
// or a handshake or data packet arriving from the peer's lease address
// (bindWrapper), in both cases before wireguard-go sees the packet, so
// nothing is lost. A peer idle for IdleAfter is removed from the device
// and stays in the table.

// Modes of Options.OnDemandPeers.
const (
	// OnDemandAuto turns the mode on above OnDemandThreshold peers.
	OnDemandAuto = "auto"
	OnDemandOn   = "on"
	OnDemandOff  = "off"
)

// OnDemandThreshold is the peer count above which "auto" configures peers
// on demand. Below it every peer stays configured, as on a kernel device:
// 1,000 peers cost wireguard-go about 60 MB, and a fully configured
// device answers a peer whose handshakes come from an address its lease
// does not name (behind NAT), which the on-demand mode cannot tell apart
// from a stranger's.
const OnDemandThreshold = 1000

// IdleAfter is how long a configured peer may go without a byte either
// way before the on-demand mode removes it from the device. It is
// WireGuard's reject-after time (180 s) and a little: by then the peer's
// session keys are dead, so its next packet needs a new handshake whether
// or not the peer stayed configured, and removing it costs nothing the
// protocol would not spend anyway.
const IdleAfter = 190 * time.Second

// Activations are bounded so a flood of packets to many idle peers (a
// scan across the Network) cannot configure thousands at once: a burst of
// activationBurst, then activationRate per second (each peer about 50 KB:
// at most some 13 MB at once, 5 MB/s after). Refused ones are counted;
// their packet is dropped by wireguard-go as for an unknown address, and
// the next packet tries again.
const (
	activationRate  = 100
	activationBurst = 256
)

// onDemand is the table of every peer the leases name, and which of them
// are configured on the device.
type onDemand struct {
	// enabled is read on the data path for every batch; the rest is
	// behind mu.
	enabled atomic.Bool

	mu sync.Mutex
	// specs are the wanted peers by key; bySubnet maps each allowed
	// prefix to its peer's key, byEndpoint each lease endpoint.
	specs      map[keys.Key]PeerSpec
	bySubnet   map[netip.Prefix]keys.Key
	byEndpoint map[netip.AddrPort]keys.Key
	// bits are the prefix lengths present in bySubnet, per family, for
	// the lookup of a destination address.
	bits4, bits6 []int
	configured   map[keys.Key]bool
	// probation are the peers configured by inbound packets until they
	// show they are the peer (probation.go); holding counts those held
	// by a data packet (read on the data path).
	probation map[keys.Key]probation
	holding   atomic.Int32
	// verifier proves initiations (nil until the device has this
	// host's key); latest is the newest initiation timestamp proven from
	// each key, kept while the key is a lease's, across idle removals (an
	// older or equal one is a replay); kicked is when a data packet last
	// started a handshake with each peer (activate.go).
	verifier atomic.Pointer[initiationVerifier]
	latest   map[keys.Key]tai64n.Timestamp
	kicked   map[keys.Key]time.Time
	// limiter bounds activations by outbound packets and proven
	// initiations, heldLimiter those by data packets, proofs the proofs.
	limiter, heldLimiter, proofs *rate.Limiter
	// jobs and closing are the worker's (start, stop); nil when none runs.
	jobs    chan configureJob
	closing chan struct{}

	// configure adds a peer to the device (and, when kick is set, starts
	// a handshake); set by the backend.
	configure func(spec PeerSpec, kick bool) error

	added, capped, failed, idled atomic.Uint64
	// refused counts activations by data packets refused because
	// maxOnProbation peers were held or the peer was kicked within
	// kickEvery; expired the peers removed because they did not show they
	// were the peer in time.
	refused, expired atomic.Uint64
	// forged counts initiations that failed their proof, replayed those
	// whose timestamp was not newer than the key's latest.
	forged, replayed atomic.Uint64
}

func newOnDemand() *onDemand {
	return &onDemand{specs: map[keys.Key]PeerSpec{}, bySubnet: map[netip.Prefix]keys.Key{},
		byEndpoint: map[netip.AddrPort]keys.Key{}, configured: map[keys.Key]bool{}, probation: map[keys.Key]probation{},
		latest: map[keys.Key]tai64n.Timestamp{}, kicked: map[keys.Key]time.Time{},
		limiter:     rate.NewLimiter(activationRate, activationBurst),
		heldLimiter: rate.NewLimiter(heldRate, heldBurst),
		proofs:      rate.NewLimiter(proofRate, proofBurst)}
}

// on reports whether the device holds only the peers in use (the mode
// is on); read for every batch on the data path.
func (o *onDemand) on() bool { return o.enabled.Load() }

// setOn turns the mode on or off; changed says whether it was the other.
func (o *onDemand) setOn(on bool) (changed bool) { return o.enabled.Swap(on) != on }

// stats are the table's counts and counters (/status and /metrics).
func (o *onDemand) stats() OnDemandStats {
	known, configured := o.counts()
	return OnDemandStats{Enabled: o.on(), Known: known, Configured: configured, Added: o.added.Load(), Capped: o.capped.Load(),
		Idled: o.idled.Load(), Refused: o.refused.Load(), Expired: o.expired.Load(),
		Forged: o.forged.Load(), Replayed: o.replayed.Load()}
}

// countIdled and countExpired count peers removed from the device for
// idleness and for want of a handshake.
func (o *onDemand) countIdled(n int)   { o.idled.Add(uint64(n)) }
func (o *onDemand) countExpired(n int) { o.expired.Add(uint64(n)) }

// setWanted replaces the table with want (the whole desired peer set).
func (o *onDemand) setWanted(want []PeerSpec) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.specs = make(map[keys.Key]PeerSpec, len(want))
	o.bySubnet = make(map[netip.Prefix]keys.Key, len(want))
	o.byEndpoint = make(map[netip.AddrPort]keys.Key, len(want))
	o.bits4, o.bits6 = nil, nil
	for _, s := range want {
		o.addLocked(s)
	}
	o.forgetLeftLocked()
}

// forgetLeftLocked drops what is kept per key of keys no lease holds
// any more (o.mu held).
func (o *onDemand) forgetLeftLocked() {
	for k := range o.latest {
		if _, ok := o.specs[k]; !ok {
			delete(o.latest, k)
		}
	}
	for k := range o.kicked {
		if _, ok := o.specs[k]; !ok {
			delete(o.kicked, k)
		}
	}
}

// update applies a delta to the table: before are the specs of the peers
// that changed or left, after those that came or changed.
func (o *onDemand) update(before, after []PeerSpec) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range before {
		delete(o.specs, s.PublicKey)
		for _, p := range s.AllowedIPs {
			if o.bySubnet[p] == s.PublicKey {
				delete(o.bySubnet, p)
			}
		}
		if o.byEndpoint[s.Endpoint] == s.PublicKey {
			delete(o.byEndpoint, s.Endpoint)
		}
	}
	for _, s := range after {
		o.addLocked(s)
	}
	o.forgetLeftLocked()
}

func (o *onDemand) addLocked(s PeerSpec) {
	o.specs[s.PublicKey] = s
	if s.Endpoint.IsValid() {
		o.byEndpoint[s.Endpoint] = s.PublicKey
	}
	for _, p := range s.AllowedIPs {
		o.bySubnet[p] = s.PublicKey
		bits := &o.bits4
		if p.Addr().Is6() {
			bits = &o.bits6
		}
		if !slices.Contains(*bits, p.Bits()) {
			*bits = append(*bits, p.Bits())
		}
	}
}

// setConfigured records which peers the device holds (read back by a
// whole apply or the idle sweep).
func (o *onDemand) setConfigured(have []keys.Key) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.configured = make(map[keys.Key]bool, len(have))
	for _, k := range have {
		o.configured[k] = true
	}
}

// markRemoved forgets that peers are configured (removed for idleness or
// because they left).
func (o *onDemand) markRemoved(gone []keys.Key) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, k := range gone {
		delete(o.configured, k)
		o.endProbationLocked(k)
	}
}

// configuredOf keeps the specs whose peers the device holds, and those
// behind NAT (always configured).
func (o *onDemand) configuredOf(specs []PeerSpec) []PeerSpec {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []PeerSpec
	for _, s := range specs {
		if o.configured[s.PublicKey] || s.NAT {
			out = append(out, s)
		}
	}
	return out
}

// setConfigure sets how a peer is added to the device (a new device
// after a recreate).
func (o *onDemand) setConfigure(configure func(spec PeerSpec, kick bool) error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.configure = configure
}

// behindNAT reports whether a known peer's lease marks it behind NAT:
// such a peer is never removed for idleness.
func (o *onDemand) behindNAT(k keys.Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.specs[k].NAT
}

// counts returns how many peers the table knows and how many are
// configured.
func (o *onDemand) counts() (known, configured int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.specs), len(o.configured)
}

// outboundBatch is called with each batch read from the TUN before
// wireguard-go sees it: a packet for a known peer that is not configured
// configures it. The table is locked once per batch, and the steady state
// (every peer in use already configured) allocates nothing.
func (o *onDemand) outboundBatch(bufs [][]byte, sizes []int, offset, n int) {
	var pending []keys.Key
	o.mu.Lock()
	for i := range n {
		dst, ok := packetDst(bufs[i][offset : offset+sizes[i]])
		if !ok {
			continue
		}
		if key, found := o.lookupLocked(dst); found && !o.configured[key] && !slices.Contains(pending, key) {
			pending = append(pending, key)
		}
	}
	o.mu.Unlock()
	for _, key := range pending {
		o.activate(key, outboundPacket)
	}
}

// lookupLocked finds the peer whose allowed prefix holds dst.
func (o *onDemand) lookupLocked(dst netip.Addr) (keys.Key, bool) {
	bits := o.bits4
	if dst.Is6() {
		bits = o.bits6
	}
	for _, b := range bits {
		p, err := dst.Prefix(b)
		if err != nil {
			continue
		}
		if k, ok := o.bySubnet[p]; ok {
			return k, true
		}
	}
	return keys.Key{}, false
}

// packetDst is the destination address of an IP packet, packetSrc its
// source.
func packetDst(packet []byte) (netip.Addr, bool) { return packetAddr(packet, 16, 24) }
func packetSrc(packet []byte) (netip.Addr, bool) { return packetAddr(packet, 12, 8) }

// packetAddr reads the address at offset v4 of an IPv4 header or v6 of
// an IPv6 one.
func packetAddr(packet []byte, v4, v6 int) (netip.Addr, bool) {
	if len(packet) < 1 {
		return netip.Addr{}, false
	}
	switch packet[0] >> 4 {
	case 4:
		if len(packet) >= 20 {
			return netip.AddrFrom4([4]byte(packet[v4 : v4+4])), true
		}
	case 6:
		if len(packet) >= 40 {
			return netip.AddrFrom16([16]byte(packet[v6 : v6+16])), true
		}
	}
	return netip.Addr{}, false
}

// OnDemandStats is what the on-demand mode reports for /status and
// /metrics.
type OnDemandStats struct {
	// Enabled says whether the device holds only the peers in use.
	Enabled bool
	// Known are the peers the leases name; Configured those on the
	// device (the others are idle).
	Known, Configured int
	// Added counts peers configured because traffic needed them, Capped
	// the activations refused by the rate bound, Idled the peers removed
	// for idleness.
	Added, Capped, Idled uint64
	// Refused counts activations by data packets refused because
	// maxOnProbation peers were held or the peer was kicked lately;
	// Expired the peers removed because they did not show they were the
	// peer in time (packets forged "from" a lease's address, replays, or
	// a peer gone).
	Refused, Expired uint64
	// Forged counts handshake initiations that failed their proof (not
	// made with this host's key, a stranger's key, no private key behind
	// it), Replayed those whose timestamp was not newer than the latest
	// from their key.
	Forged, Replayed uint64
	// NATNotEager are the peers behind NAT (their leases say so) beyond
	// the bound on those configured eagerly (maxEager): configured only
	// for traffic.
	NATNotEager int
}

// OnDemand reports the on-demand mode's state.
func (b *Backend) OnDemand() OnDemandStats {
	st := b.peers.stats()
	b.mu.Lock()
	st.NATNotEager = b.found.notEager
	b.mu.Unlock()
	return st
}
