package wireguard

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
)

// ipv4Packet is a minimal IPv4 header to dst; ipv6Packet an IPv6 one.
func ipv4Packet(dst string) []byte {
	p := make([]byte, 28)
	p[0] = 0x45
	a := netip.MustParseAddr(dst).As4()
	copy(p[16:20], a[:])
	return p
}

func ipv6Packet(dst string) []byte {
	p := make([]byte, 48)
	p[0] = 0x60
	a := netip.MustParseAddr(dst).As16()
	copy(p[24:40], a[:])
	return p
}

// wgMessage is a WireGuard message of a type, padded to size.
func wgMessage(kind uint32, size int) []byte {
	p := make([]byte, size)
	binary.LittleEndian.PutUint32(p, kind)
	return p
}

// TestOnDemandTable: a packet to a known peer's subnet (either family)
// configures it once; a data packet from a lease endpoint configures that
// peer with a handshake kicked, a proven initiation from anywhere
// configures its sender; other traffic (an initiation without proof, a
// replayed one) configures nothing; a peer that left or was removed for
// idleness is handled as the table says.
func TestOnDemandTable(t *testing.T) {
	self, aPrivate := privateKey(t), privateKey(t)
	a, b := aPrivate.Public(), mustKey(t)
	fromA := newInitiationSource(t, aPrivate, self.Public())
	specA := PeerSpec{Lease: "a", PublicKey: a, Endpoint: netip.MustParseAddrPort("192.168.50.2:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.5.2.0/24"), netip.MustParsePrefix("fc00:5:0:2::/64")}}
	specB := PeerSpec{Lease: "b", PublicKey: b, Endpoint: netip.MustParseAddrPort("192.168.50.3:51820"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.5.3.0/24")}}
	o := newOnDemand()
	var mu sync.Mutex
	var got []string
	o.setConfigure(func(s PeerSpec, kick bool) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, s.Lease+map[bool]string{true: "+kick", false: ""}[kick])
		return nil
	})
	o.enabled.Store(true)
	o.setIdentity(self)
	o.start()
	defer o.stop()
	// Inbound activations do not wait for the worker: wait here.
	waitConfigured := func(want string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			mu.Lock()
			have := joined(got)
			mu.Unlock()
			if have == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("configured %q, want %q", have, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	o.setWanted([]PeerSpec{specA, specB})
	o.outbound(ipv4Packet("10.5.2.7"))
	o.outbound(ipv4Packet("10.5.2.8")) // a, already configured
	o.outbound(ipv4Packet("10.6.0.1")) // nobody's
	o.outbound([]byte{0x45})           // truncated
	o.inbound(wgMessage(messageTransport, 32), netip.MustParseAddrPort("192.168.50.3:51820"))
	o.inbound(wgMessage(messageInitiation, 148), netip.MustParseAddrPort("192.168.50.2:51820")) // no proof
	o.inbound(wgMessage(2, 92), netip.MustParseAddrPort("192.168.50.2:51820"))                  // a response: not ours to act on
	waitConfigured("a b+kick")
	if known, configured := o.counts(); known != 2 || configured != 2 || o.added.Load() != 2 {
		t.Errorf("counts %d %d, added %d", known, configured, o.added.Load())
	}
	// Idle removal, then the IPv6 subnet of a brings it back.
	o.markRemoved([]keys.Key{a})
	o.outbound(ipv6Packet("fc00:5:0:2::9"))
	waitConfigured("a b+kick a")
	// a's proven initiation configures it from any address (it moved,
	// or is behind NAT); the same initiation again is a replay.
	o.markRemoved([]keys.Key{a})
	initiation := fromA.next(t)
	o.inbound(initiation, netip.MustParseAddrPort("192.168.50.99:4000"))
	waitConfigured("a b+kick a a")
	o.markRemoved([]keys.Key{a})
	o.inbound(initiation, netip.MustParseAddrPort("192.168.50.2:51820"))
	time.Sleep(50 * time.Millisecond)
	waitConfigured("a b+kick a a")
	if o.replayed.Load() != 1 || o.forged.Load() != 1 {
		t.Errorf("replayed %d, forged %d; want 1 each", o.replayed.Load(), o.forged.Load())
	}
	// b leaves: its subnet and endpoint configure nothing any more.
	o.update([]PeerSpec{specB}, nil)
	o.markRemoved([]keys.Key{b})
	o.outbound(ipv4Packet("10.5.3.1"))
	o.inbound(wgMessage(messageTransport, 32), netip.MustParseAddrPort("192.168.50.3:51820"))
	time.Sleep(50 * time.Millisecond)
	waitConfigured("a b+kick a a")
}

// TestOnDemandActivationsAreBounded: a flood of packets to many idle peers
// configures at most the burst at once; the rest are refused and counted.
func TestOnDemandActivationsAreBounded(t *testing.T) {
	o := newOnDemand()
	var configured atomic.Int64
	o.setConfigure(func(PeerSpec, bool) error { configured.Add(1); return nil })
	o.enabled.Store(true)
	o.start()
	defer o.stop()
	o.setWanted(numberedSpecs(t, 2000))
	for i := range 2000 {
		o.outbound(ipv4Packet(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}).String()))
	}
	o.stop()
	n := int(configured.Load())
	if n > activationBurst+activationRate || n < activationBurst || o.capped.Load() != uint64(2000-n) {
		t.Errorf("configured %d of 2000 at once (burst %d), capped %d", n, activationBurst, o.capped.Load())
	}
}

// numberedSpecs are n peers, i at 192.168.i:51820 with 10.i.0/24.
func numberedSpecs(t *testing.T, n int) []PeerSpec {
	var specs []PeerSpec
	for i := range n {
		specs = append(specs, PeerSpec{PublicKey: mustKey(t), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), 51820),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}})
	}
	return specs
}

func joined(s []string) string { return strings.Join(s, " ") }

// BenchmarkOnDemandOutbound: the cost the on-demand table adds to a batch
// of 128 packets read from the TUN, all for configured peers (the steady
// state), with 10,000 peers known. `go test -bench OnDemand
// ./backends/wireguard/`; figures in the closing notes.
func BenchmarkOnDemandOutbound(b *testing.B) {
	o := newOnDemand()
	var specs []PeerSpec
	for i := range 10000 {
		k, err := keys.Generate()
		if err != nil {
			b.Fatal(err)
		}
		subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		specs = append(specs, PeerSpec{Lease: subnet.String(), PublicKey: k, AllowedIPs: []netip.Prefix{subnet},
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), 51820)})
	}
	o.setWanted(specs)
	var all []keys.Key
	for _, s := range specs {
		all = append(all, s.PublicKey)
	}
	o.setConfigured(all)
	o.enabled.Store(true)
	bufs, sizes := make([][]byte, 128), make([]int, 128)
	for i := range bufs {
		bufs[i] = ipv4Packet(fmt.Sprintf("10.%d.%d.7", (i*77)>>8&0xff, (i*77)&0xff))
		sizes[i] = len(bufs[i])
	}
	b.ResetTimer()
	for range b.N {
		o.outboundBatch(bufs, sizes, 0, len(bufs))
	}
}

// outbound is outboundBatch for one packet.
func (o *onDemand) outbound(packet []byte) {
	o.outboundBatch([][]byte{packet}, []int{len(packet)}, 0, 1)
}

// inbound is inboundBatch for one datagram.
func (o *onDemand) inbound(packet []byte, from netip.AddrPort) {
	o.inboundBatch([][]byte{packet}, []int{len(packet)}, []netip.AddrPort{from}, 1)
}
