package wireguard

import (
	"time"

	"github.com/weftnet/weft/keys"
)

// Probation of peers configured by inbound packets, which anyone can
// forge; each stays only if the packet's sender shows it is the peer:
//   - a proven initiation (proveInitiation: the sender holds the key's
//     private half) puts its peer on probation until the handshake it
//     starts completes, within probationTimeout; only a replay made
//     before this weftd saw the key's newer initiations could fail to;
//   - a data packet from a lease's endpoint proves nothing: its peer is
//     held for holdTimeout and stays only if a packet from the peer comes
//     out of the tunnel meanwhile. A forged one makes this host start a
//     handshake that the real peer completes, so a completed handshake
//     is no proof; decrypted traffic from the peer is (the real peer
//     sends it only when it had a session this device lost). At most
//     maxOnProbation peers are held at once; further data packets are
//     refused and counted until holds end.
//
// Proven peers do not count against the holds, so forged data packets
// never stop a real peer's first handshake. Peers configured eagerly
// (behind NAT, outside peers) and by outbound traffic are not on
// probation.
const (
	probationTimeout = 10 * time.Second
	holdTimeout      = 5 * time.Second
	maxOnProbation   = 128
	// verifyEvery is how often the probation is checked while a peer
	// is on it (one device read).
	verifyEvery = time.Second
)

// probation is one peer's, from since.
type probation struct {
	since time.Time
	// proven: it came from a proven initiation; otherwise it is a hold
	// by a data packet.
	proven bool
	// inner: a packet from the peer came out of the tunnel during the
	// hold.
	inner bool
}

// startProbationLocked puts key on probation (o.mu held).
func (o *onDemand) startProbationLocked(key keys.Key, now time.Time, proven bool) {
	o.endProbationLocked(key)
	o.probation[key] = probation{since: now, proven: proven}
	if !proven {
		o.holding.Add(1)
	}
}

// endProbationLocked takes key off probation (o.mu held).
func (o *onDemand) endProbationLocked(key keys.Key) {
	if p, ok := o.probation[key]; ok {
		delete(o.probation, key)
		if !p.proven {
			o.holding.Add(-1)
		}
	}
}

// awaitingHandshake says how many peers are on probation.
func (o *onDemand) awaitingHandshake() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.probation)
}

// onProbation reports whether k is on probation.
func (o *onDemand) onProbation(k keys.Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.probation[k]
	return ok
}

// innerBatch is called with each batch wireguard-go writes to the TUN
// (packets it decrypted) while peers are held: a packet from a held
// peer's subnet ends its hold. Nothing is looked at otherwise.
func (o *onDemand) innerBatch(bufs [][]byte, offset int) {
	if o.holding.Load() == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, buf := range bufs {
		src, ok := packetSrc(buf[offset:])
		if !ok {
			continue
		}
		if key, found := o.lookupLocked(src); found {
			if p, held := o.probation[key]; held && !p.proven {
				p.inner = true
				o.probation[key] = p
			}
		}
	}
}

// expireProbation ends the probation of each peer that showed it is
// the peer (a proven one whose handshake completed after its activation,
// lastHandshake being what the device holds; a held one whose traffic
// came out of the tunnel) and returns those that did not in time, to be
// removed from the device.
func (o *onDemand) expireProbation(now time.Time, lastHandshake map[keys.Key]time.Time) []keys.Key {
	o.mu.Lock()
	defer o.mu.Unlock()
	var expired []keys.Key
	for k, p := range o.probation {
		switch {
		case p.proven && lastHandshake[k].After(p.since), !p.proven && p.inner:
			o.endProbationLocked(k) // a peer like any other
		case p.proven && now.Sub(p.since) >= probationTimeout, !p.proven && now.Sub(p.since) >= holdTimeout:
			expired = append(expired, k)
		}
	}
	return expired
}

// expireProbation reads the device when peers are on probation and
// removes those whose handshake did not come in time.
func (b *Backend) expireProbation(now time.Time) {
	if b.peers.awaitingHandshake() == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	dev, ok := b.readLocked()
	if !ok {
		return
	}
	handshakes := make(map[keys.Key]time.Time, len(dev.Peers))
	for _, p := range dev.Peers {
		handshakes[keys.Key(p.PublicKey)] = p.LastHandshakeTime
	}
	expired := b.peers.expireProbation(now, handshakes)
	if len(expired) == 0 {
		return
	}
	if err := b.removeLocked(expired); err != nil {
		b.log.Warn("removing peers whose handshake never came", "err", err)
		return
	}
	b.peers.countExpired(len(expired))
	b.log.Debug("removed peers configured by inbound packets that did not show they were the peer (forged or replayed, or peers gone)",
		"peers", len(expired))
}
