package wireguard

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

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
	// probation are the peers configured because a packet arrived "from"
	// their lease's endpoint, by when, until their first handshake
	// completes (probation.go).
	probation map[keys.Key]time.Time
	limiter   *rate.Limiter
	// jobs and closing are the worker's (start, stop); nil when none runs.
	jobs    chan activation
	closing chan struct{}

	// configure adds a peer to the device (and, when kick is set, starts
	// a handshake); set by the backend.
	configure func(spec PeerSpec, kick bool) error

	added, capped, failed, idled atomic.Uint64
	// refused counts inbound activations refused because maxOnProbation
	// peers already await a handshake; expired the peers removed because
	// none came within probationTimeout.
	refused, expired atomic.Uint64
}

func newOnDemand() *onDemand {
	return &onDemand{specs: map[keys.Key]PeerSpec{}, bySubnet: map[netip.Prefix]keys.Key{},
		byEndpoint: map[netip.AddrPort]keys.Key{}, configured: map[keys.Key]bool{}, probation: map[keys.Key]time.Time{},
		limiter: rate.NewLimiter(activationRate, activationBurst)}
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
		Idled: o.idled.Load(), Refused: o.refused.Load(), Expired: o.expired.Load()}
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
		delete(o.probation, k)
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
		o.activate(key, false, false)
	}
}

// inboundBatch is called with each batch received from the underlay
// before wireguard-go sees it (from[i] is packet i's sender; invalid:
// unknown): a handshake initiation or a data packet from a lease's
// endpoint whose peer is not configured configures it, on probation
// (probation.go: anyone can forge that source address). A data packet (the
// peer still has a session from before this device lost it: weftd
// restarted, the peer was idle here) starts a handshake at once, so the
// peer does not wait out its rekey timeout; an initiation does not, since
// two handshakes crossing lose the first packets. The table is locked once
// per batch.
func (o *onDemand) inboundBatch(packets [][]byte, sizes []int, from []netip.AddrPort, n int) {
	type pendingPeer struct {
		key  keys.Key
		kick bool
	}
	var pending []pendingPeer
	o.mu.Lock()
	for i := range n {
		if sizes[i] < 4 || !from[i].IsValid() {
			continue
		}
		kind := binary.LittleEndian.Uint32(packets[i][:4])
		if kind != messageInitiation && kind != messageTransport {
			continue
		}
		key, found := o.byEndpoint[netip.AddrPortFrom(from[i].Addr().Unmap(), from[i].Port())]
		if !found || o.configured[key] {
			continue
		}
		if j := slices.IndexFunc(pending, func(p pendingPeer) bool { return p.key == key }); j >= 0 {
			pending[j].kick = pending[j].kick || kind == messageTransport
			continue
		}
		pending = append(pending, pendingPeer{key, kind == messageTransport})
	}
	o.mu.Unlock()
	for _, p := range pending {
		o.activate(p.key, p.kick, true)
	}
}

// WireGuard message types (the first four bytes, little endian).
const (
	messageInitiation = 1
	messageTransport  = 4
)

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

// activate configures a known peer that the device does not hold, within
// the activation rate. The device call is made by the worker goroutine
// (start): an outbound packet's goroutine waits for it at most
// activationWait, or until the device closes, so a data-path goroutine
// never blocks on wireguard-go's configuration lock, which Close and a port
// change hold while they wait for those very goroutines to finish. An
// inbound activation puts the peer on probation (at most maxOnProbation at
// once) and waits only while fewer than inboundWaiters peers are on it, so
// a flood of forged datagrams holds the receive path for a few activations
// per probation period at most.
func (o *onDemand) activate(key keys.Key, kick, inbound bool) {
	o.mu.Lock()
	spec, known := o.specs[key]
	if !known || o.configured[key] || o.jobs == nil {
		o.mu.Unlock()
		return
	}
	if inbound && len(o.probation) >= maxOnProbation {
		o.mu.Unlock()
		o.refused.Add(1)
		return
	}
	if !o.limiter.Allow() {
		o.mu.Unlock()
		o.capped.Add(1)
		return
	}
	// Marked before the device call, under the lock, so concurrent
	// packets for the same peer do not configure it twice.
	o.configured[key] = true
	// A packet waits for its peer (so wireguard-go finds it configured:
	// nothing is lost) unless it came in while many peers await their
	// handshake, as under a flood of forged datagrams.
	wait := !inbound || len(o.probation) < inboundWaiters
	if inbound {
		o.probation[key] = time.Now()
	}
	jobs, closing := o.jobs, o.closing
	o.mu.Unlock()
	done := make(chan struct{})
	if !wait {
		select {
		case jobs <- activation{spec: spec, kick: kick, done: done}:
		default: // the worker is behind: the peer's next packet tries again
			o.markRemoved([]keys.Key{key})
			o.capped.Add(1)
		}
		return
	}
	select {
	case jobs <- activation{spec: spec, kick: kick, done: done}:
	case <-closing:
		o.markRemoved([]keys.Key{key})
		return
	}
	timeout := time.NewTimer(activationWait)
	defer timeout.Stop()
	select {
	case <-done:
	case <-closing:
	case <-timeout.C:
	}
}

// activationWait bounds how long a packet waits for its peer to be
// configured (a few hundred microseconds normally).
const activationWait = 200 * time.Millisecond

// activation is one peer for the worker to configure; done is closed when
// it is.
type activation struct {
	spec PeerSpec
	kick bool
	done chan struct{}
}

// start runs the worker that configures activated peers on the device,
// until stop.
func (o *onDemand) start() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.jobs != nil {
		return
	}
	o.jobs, o.closing = make(chan activation, activationBurst), make(chan struct{})
	go o.work(o.jobs, o.closing)
}

// stop ends the worker and releases every packet waiting for it; called
// before the device closes.
func (o *onDemand) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.jobs != nil {
		close(o.closing)
		o.jobs, o.closing = nil, nil
	}
}

func (o *onDemand) work(jobs chan activation, closing chan struct{}) {
	for {
		select {
		case <-closing:
			return
		case a := <-jobs:
			o.mu.Lock()
			configure := o.configure
			o.mu.Unlock()
			if configure == nil || configure(a.spec, a.kick) != nil {
				o.failed.Add(1)
				o.markRemoved([]keys.Key{a.spec.PublicKey})
			} else {
				o.added.Add(1)
			}
			close(a.done)
		}
	}
}

// packetDst is the destination address of an IP packet.
func packetDst(packet []byte) (netip.Addr, bool) {
	if len(packet) < 1 {
		return netip.Addr{}, false
	}
	switch packet[0] >> 4 {
	case 4:
		if len(packet) >= 20 {
			return netip.AddrFrom4([4]byte(packet[16:20])), true
		}
	case 6:
		if len(packet) >= 40 {
			return netip.AddrFrom16([16]byte(packet[24:40])), true
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
	// Refused counts activations by inbound packets refused because
	// maxOnProbation peers awaited a handshake; Expired the peers removed
	// because their handshake did not complete within probationTimeout
	// (packets forged "from" a lease's address, or a peer gone).
	Refused, Expired uint64
	// SeenNotEager are the peers seen behind NAT beyond the bound on
	// those configured eagerly (maxEager): sent to where they are seen,
	// configured only for traffic.
	SeenNotEager int
}

// OnDemand reports the on-demand mode's state.
func (b *Backend) OnDemand() OnDemandStats {
	st := b.peers.stats()
	b.mu.Lock()
	st.SeenNotEager = b.found.now.capped
	b.mu.Unlock()
	return st
}

// activity is what the idle sweep last saw of a configured peer: its byte
// counters and when they last changed.
type activity struct {
	rx, tx int64
	since  time.Time
}

// sweepIdle removes peers idle for OnDemandIdleAfter from the device while
// the on-demand mode is on, checking a few times per idle period (at most
// every 30 s), until stop is closed.
func (b *Backend) sweepIdle(stop chan struct{}) {
	every := min(b.cfg.opts.OnDemandIdleAfter/4, 30*time.Second)
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	verify := time.NewTicker(verifyEvery)
	defer verify.Stop()
	seen := map[keys.Key]activity{}
	for {
		select {
		case <-stop:
			return
		case <-verify.C:
			b.expireProbation(time.Now())
			continue
		case <-ticker.C:
		}
		if b.peers.on() {
			b.removeIdle(seen, time.Now())
		} else {
			clear(seen)
		}
	}
}

// readLocked reads the device for the on-demand sweeps (b.mu held);
// false when there is none or it cannot be read (a whole apply recreates
// a missing device).
func (b *Backend) readLocked() (*wgtypes.Device, bool) {
	if b.link.dev == nil || b.link.control == nil {
		return nil, false
	}
	dev, err := b.link.read()
	return dev, err == nil
}

// removeLocked removes peers from the device in one configuration and
// marks them idle in the on-demand table (b.mu held).
func (b *Backend) removeLocked(peers []keys.Key) error {
	cfg := wgtypes.Config{}
	for _, k := range peers {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), Remove: true})
	}
	if err := b.link.configure(cfg); err != nil {
		return err
	}
	b.peers.markRemoved(peers)
	return nil
}

// removeIdle reads the device once and removes the peers whose counters
// have not moved, and whose last handshake is older, than the idle time.
func (b *Backend) removeIdle(seen map[keys.Key]activity, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	dev, ok := b.readLocked()
	if !ok {
		return
	}
	idleAfter := b.cfg.opts.OnDemandIdleAfter
	present := make(map[keys.Key]bool, len(dev.Peers))
	var idle []keys.Key
	for _, p := range dev.Peers {
		k := keys.Key(p.PublicKey)
		present[k] = true
		if b.peers.behindNAT(k) {
			continue // always configured; the endpoint it roamed to stays
		}
		if b.peers.onProbation(k) {
			continue // its handshake decides (probation.go)
		}
		a, ok := seen[k]
		if !ok || a.rx != p.ReceiveBytes || a.tx != p.TransmitBytes {
			seen[k] = activity{rx: p.ReceiveBytes, tx: p.TransmitBytes, since: now}
			continue
		}
		if now.Sub(a.since) >= idleAfter && now.Sub(p.LastHandshakeTime) >= idleAfter {
			idle = append(idle, k)
		}
	}
	for k := range seen {
		if !present[k] {
			delete(seen, k)
		}
	}
	if len(idle) == 0 {
		return
	}
	if err := b.removeLocked(idle); err != nil {
		b.log.Warn("removing idle peers", "err", err)
		return
	}
	for _, k := range idle {
		delete(seen, k)
	}
	b.peers.countIdled(len(idle))
	b.log.Debug("idle peers removed from the device; they come back with their next packet", "peers", len(idle), "idle_after", idleAfter)
}
