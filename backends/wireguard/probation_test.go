package wireguard

import (
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// TestDataPacketsOnlyHold: issue 41. Data packets forged "from" 800
// lease endpoints configure at most the held budget's burst at once (the
// rest are counted), never wait for the device (slow here: 5 ms a peer),
// and each starts one handshake. A held peer whose traffic comes out of
// the tunnel stays; the others are handed back for removal after
// holdTimeout, and their endpoints' next data packets within kickEvery
// configure nothing. Outbound traffic still configures peers, not held.
func TestDataPacketsOnlyHold(t *testing.T) {
	o := newOnDemand()
	var configured, kicked atomic.Int64
	o.setConfigure(func(_ PeerSpec, kick bool) error {
		time.Sleep(5 * time.Millisecond) // a device slow to configure
		configured.Add(1)
		if kick {
			kicked.Add(1)
		}
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
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("800 inbound datagrams took %v: the receive path waited for the device", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for configured.Load() < heldBurst && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	held := int(o.holding.Load())
	if n := configured.Load(); n < heldBurst || n > heldBurst+2 || kicked.Load() != n || int(n) != held ||
		o.capped.Load() != uint64(800-held) {
		t.Errorf("configured %d (kicked %d), held %d, capped %d; want the burst %d, each kicked", n, kicked.Load(), held,
			o.capped.Load(), heldBurst)
	}
	// Peer 0's traffic comes out of the tunnel; nobody else's does.
	o.innerBatch([][]byte{ipv4From("10.0.0.9")}, 0)
	if early := o.expireProbation(time.Now().Add(holdTimeout/2), nil); len(early) != 0 || o.awaitingHandshake() != held-1 {
		t.Errorf("before the hold ends: %d expired, %d held", len(early), o.awaitingHandshake())
	}
	expired := o.expireProbation(time.Now().Add(holdTimeout), nil)
	if len(expired) != held-1 {
		t.Errorf("%d expired, want %d", len(expired), held-1)
	}
	o.markRemoved(expired)
	if _, n := o.counts(); n != 1 || o.awaitingHandshake() != 0 || o.holding.Load() != 0 {
		t.Errorf("after the removal: %d configured, %d held; want the one with traffic alone", n, o.awaitingHandshake())
	}
	// A removed peer's endpoint sends again at once: no second kick.
	refused := o.refused.Load()
	o.inbound([]byte{messageTransport, 0, 0, 0}, specs[1].Endpoint)
	if o.refused.Load() != refused+1 || o.holding.Load() != 0 {
		t.Errorf("a data packet within kickEvery of the last kick: refused %d -> %d, held %d", refused, o.refused.Load(), o.holding.Load())
	}
	// Outbound traffic is not held.
	o.outbound(ipv4Packet("10.0.5.1"))
	if o.awaitingHandshake() != 0 {
		t.Errorf("outbound activation: %d held", o.awaitingHandshake())
	}
}

// ipv4From is a minimal IPv4 header from src.
func ipv4From(src string) []byte {
	p := ipv4Packet("10.255.0.1")
	a := netip.MustParseAddr(src).As4()
	copy(p[12:16], a[:])
	return p
}
