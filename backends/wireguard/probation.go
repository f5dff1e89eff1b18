package wireguard

import (
	"time"

	"github.com/weftnet/weft/keys"
)

// Probation of peers configured by inbound packets. Their source address
// is all the on-demand mode knows of them, and anyone can forge it: a
// flood of 4-byte datagrams "from" every lease's endpoint would otherwise
// configure every peer (the memory the mode exists to save) and make this
// host send each real host a handshake. So a peer configured that way
// stays only if a handshake with it completes within probationTimeout
// (WireGuard authenticates it; a real peer's takes one round trip, since
// activation starts one at once), and at most maxOnProbation await theirs
// at any time; further inbound activations are refused and counted until
// slots free up. Peers configured eagerly (behind NAT, outside peers) and
// by outbound traffic are not on probation.
const (
	probationTimeout = 10 * time.Second
	maxOnProbation   = 128
	// inboundWaiters is how many peers may be on probation while an
	// inbound packet still waits for its peer to be configured (see
	// activate); past it the packet goes on at once, and an initiation
	// may be lost (its sender retries within 5 s).
	inboundWaiters = 16
	// verifyEvery is how often the probation is checked while a peer
	// is on it (one device read).
	verifyEvery = time.Second
)

// awaitingHandshake says how many peers are on probation.
func (o *onDemand) awaitingHandshake() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.probation)
}

// onProbation reports whether k awaits its first handshake.
func (o *onDemand) onProbation(k keys.Key) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.probation[k]
	return ok
}

// expireProbation ends the probation of each peer whose handshake
// completed after its activation (lastHandshake: what the device holds) and
// returns those still without one after probationTimeout, to be removed
// from the device.
func (o *onDemand) expireProbation(now time.Time, lastHandshake map[keys.Key]time.Time) []keys.Key {
	o.mu.Lock()
	defer o.mu.Unlock()
	var expired []keys.Key
	for k, since := range o.probation {
		switch {
		case lastHandshake[k].After(since):
			delete(o.probation, k) // authenticated: a peer like any other
		case now.Sub(since) >= probationTimeout:
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
	b.log.Debug("removed peers configured by inbound packets that completed no handshake (forged sources, or peers gone)",
		"peers", len(expired), "within", probationTimeout)
}
