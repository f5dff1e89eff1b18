package wireguard

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
)

// TestInboundActivationsOnProbation: issue 30, item 4. Datagrams forged
// "from" 800 lease endpoints configure at most maxOnProbation peers (the
// rest are refused and counted), the receive path waits for the device
// (slow here: 5 ms a peer) only for the first inboundWaiters of them, a
// peer whose handshake completes
// leaves probation, and the others are handed back for removal once
// probationTimeout has passed; outbound traffic still configures peers.
func TestInboundActivationsOnProbation(t *testing.T) {
	o := newOnDemand()
	var configured atomic.Int64
	o.setConfigure(func(PeerSpec, bool) error {
		time.Sleep(5 * time.Millisecond) // a device slow to configure
		configured.Add(1)
		return nil
	})
	o.enabled.Store(true)
	o.start()
	defer o.stop()
	specs := numberedSpecs(t, 800)
	o.setWanted(specs)
	start := time.Now()
	for _, s := range specs {
		o.inbound([]byte{messageTransport, 0, 0, 0}, s.Endpoint)
	}
	// 16 waits of 5 ms; waiting for all 128 would take 640 ms.
	if took := time.Since(start); took > 300*time.Millisecond {
		t.Errorf("800 inbound datagrams took %v: the receive path waited for the device", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for configured.Load() < maxOnProbation && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := configured.Load(); n != maxOnProbation || o.awaitingHandshake() != maxOnProbation || o.refused.Load() != 800-maxOnProbation {
		t.Errorf("configured %d, on probation %d, refused %d; want %d, %d, %d", n, o.awaitingHandshake(), o.refused.Load(),
			maxOnProbation, maxOnProbation, 800-maxOnProbation)
	}
	// Peer 0 completes its handshake; nobody else does.
	o.mu.Lock()
	since := o.probation[specs[0].PublicKey]
	o.mu.Unlock()
	handshakes := map[keys.Key]time.Time{specs[0].PublicKey: since.Add(time.Millisecond)}
	if early := o.expireProbation(since.Add(probationTimeout/2), handshakes); len(early) != 0 || o.awaitingHandshake() != maxOnProbation-1 {
		t.Errorf("before the timeout: %d expired, %d on probation", len(early), o.awaitingHandshake())
	}
	expired := o.expireProbation(time.Now().Add(probationTimeout), handshakes)
	if len(expired) != maxOnProbation-1 {
		t.Errorf("%d expired, want %d", len(expired), maxOnProbation-1)
	}
	o.markRemoved(expired)
	if _, n := o.counts(); n != 1 || o.awaitingHandshake() != 0 {
		t.Errorf("after the removal: %d configured, %d on probation; want the verified one alone", n, o.awaitingHandshake())
	}
	// A forged source's next datagram may try again (slots are free), and
	// outbound traffic is not on probation.
	o.outbound(ipv4Packet("10.0.5.1"))
	if o.awaitingHandshake() != 0 || configured.Load() != maxOnProbation+1 {
		t.Errorf("outbound activation: %d on probation, %d configured", o.awaitingHandshake(), configured.Load())
	}
}
