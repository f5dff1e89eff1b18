package wireguard

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/weftnet/weft/keys"
)

// inboundBatch is called with each batch received from the underlay
// before wireguard-go sees it (from[i] is packet i's sender; invalid:
// unknown). Two kinds of packet configure a peer the device does not
// hold:
//   - a handshake initiation whose sender proves a lease's key
//     (proveInitiation), from any address: it waits for its peer, so
//     wireguard-go answers it at once;
//   - a data packet from a lease's endpoint (the peer still has a
//     session from before this device lost it: weftd restarted, the peer
//     was idle here). Anyone can forge that source, so it only puts the
//     peer on a short hold and starts a handshake (probation.go).
//
// The data packets are looked at under one lock per batch; initiations,
// which are rare, are proven outside it.
func (o *onDemand) inboundBatch(packets [][]byte, sizes []int, from []netip.AddrPort, n int) {
	var held []keys.Key
	var initiations []int
	o.mu.Lock()
	for i := range n {
		if sizes[i] < 4 {
			continue
		}
		switch binary.LittleEndian.Uint32(packets[i][:4]) {
		case messageInitiation:
			initiations = append(initiations, i)
		case messageTransport:
			if !from[i].IsValid() {
				continue
			}
			key, found := o.byEndpoint[netip.AddrPortFrom(from[i].Addr().Unmap(), from[i].Port())]
			if found && !o.configured[key] && !slices.Contains(held, key) {
				held = append(held, key)
			}
		}
	}
	o.mu.Unlock()
	for _, i := range initiations {
		if key, ok := o.proveInitiation(packets[i][:sizes[i]]); ok {
			o.activate(key, provenInitiation)
		}
	}
	for _, key := range held {
		o.activate(key, dataPacket)
	}
}

// WireGuard message types (the first four bytes, little endian).
const (
	messageInitiation = 1
	messageTransport  = 4
)

// trigger is what made a peer wanted on the device.
type trigger int

const (
	// outboundPacket: a container sent a packet to the peer's subnet.
	outboundPacket trigger = iota
	// provenInitiation: the peer sent a handshake initiation that proves
	// its key.
	provenInitiation
	// dataPacket: a data packet came from the peer's lease endpoint
	// (unproven).
	dataPacket
)

// Bounds on proofs and on the handshakes unproven data packets start.
const (
	// proofRate and proofBurst bound initiation proofs (two X25519 each,
	// about 0.2 ms: BenchmarkInitiationProof): at most a tenth of a core
	// under a flood of initiations made with this host's public key; a
	// host of 10,000 peers sees some 80 real ones a second.
	proofRate  = 500
	proofBurst = 200
	// kickEvery is how often a data packet from one peer's endpoint may
	// start a handshake with it: forged ones make this host send a live
	// peer at most one handshake per kickEvery.
	kickEvery = 10 * time.Second
	// heldRate and heldBurst bound activations by data packets apart from
	// the others, so forged ones cannot spend the budget outbound
	// traffic and proven initiations share.
	heldRate  = 20
	heldBurst = 64
)

// proveInitiation proves an initiation (initiation.go) within the proof
// budget and checks its timestamp against the newest proven from that
// key, which it then records. It returns the sender's key when its peer
// is known and not configured. Initiations for configured peers are
// proven too, within the budget, so their timestamps are known when a
// capture of one is replayed after the peer went idle.
func (o *onDemand) proveInitiation(msg []byte) (keys.Key, bool) {
	v := o.verifier.Load()
	if v == nil || len(msg) != initiationSize {
		return keys.Key{}, false
	}
	if !v.mac1.CheckMAC1(msg) {
		o.forged.Add(1)
		return keys.Key{}, false
	}
	if !o.proofs.Allow() {
		o.capped.Add(1)
		return keys.Key{}, false
	}
	key, stamp, err := v.initiator(msg, o.knows)
	if err != nil {
		o.forged.Add(1)
		return keys.Key{}, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !stamp.After(o.latest[key]) {
		o.replayed.Add(1)
		return keys.Key{}, false
	}
	o.latest[key] = stamp
	return key, !o.configured[key]
}

// knows says whether key is a lease's.
func (o *onDemand) knows(key keys.Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.specs[key]
	return ok
}

// setIdentity sets the private key initiations are proven with (the
// device's).
func (o *onDemand) setIdentity(private keys.Key) {
	if v := o.verifier.Load(); v != nil && v.private == private {
		return
	}
	o.verifier.Store(newInitiationVerifier(private))
}

// activate configures a known peer that the device does not hold, within
// the activation rate. The device call is made by the worker goroutine
// (start): the packet's goroutine waits for it at most activationWait,
// or until the device closes, so a data-path goroutine never blocks on
// wireguard-go's configuration lock, which Close and a port change hold
// while they wait for those very goroutines to finish. A data packet
// does not wait (wireguard-go cannot decrypt it anyway: the device has no
// session with the peer), and puts the peer on hold: at most
// maxOnProbation at once, each peer kicked at most once per kickEvery,
// within a budget of its own. A proven initiation puts its peer on
// probation too, which ends when the handshake it starts completes.
func (o *onDemand) activate(key keys.Key, why trigger) {
	now := time.Now()
	o.mu.Lock()
	spec, known := o.specs[key]
	if !known || o.configured[key] || o.jobs == nil {
		o.mu.Unlock()
		return
	}
	limiter := o.limiter
	if why == dataPacket {
		if int(o.holding.Load()) >= maxOnProbation || now.Sub(o.kicked[key]) < kickEvery {
			o.mu.Unlock()
			o.refused.Add(1)
			return
		}
		limiter = o.heldLimiter
	}
	if !limiter.AllowN(now, 1) {
		o.mu.Unlock()
		o.capped.Add(1)
		return
	}
	// Marked before the device call, under the lock, so concurrent
	// packets for the same peer do not configure it twice.
	o.configured[key] = true
	if why != outboundPacket {
		o.startProbationLocked(key, now, why == provenInitiation)
	}
	kick := why == dataPacket
	if kick {
		o.kicked[key] = now
	}
	jobs, closing := o.jobs, o.closing
	o.mu.Unlock()
	done := make(chan struct{})
	if why == dataPacket {
		select {
		case jobs <- configureJob{spec: spec, kick: kick, done: done}:
		default: // the worker is behind: the peer's next packet tries again
			o.markRemoved([]keys.Key{key})
			o.capped.Add(1)
		}
		return
	}
	select {
	case jobs <- configureJob{spec: spec, kick: kick, done: done}:
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

// configureJob is one peer for the worker to configure; done is closed when
// it is.
type configureJob struct {
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
	o.jobs, o.closing = make(chan configureJob, activationBurst), make(chan struct{})
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

func (o *onDemand) work(jobs chan configureJob, closing chan struct{}) {
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
