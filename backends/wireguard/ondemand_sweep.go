package wireguard

import (
	"time"

	"github.com/weftnet/weft/keys"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

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
