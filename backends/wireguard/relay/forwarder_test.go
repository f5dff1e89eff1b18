package relay

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/backends/wireguard/wireguardtest"
	"github.com/weftnet/weft/keys"
)

// host is a real wireguard-go device on loopback with a channel TUN.
type host struct {
	key keys.Key
	tun *tuntest.ChannelTUN
	dev *device.Device
}

func newHost(t *testing.T) *host {
	t.Helper()
	key, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	h := &host{key: key, tun: tuntest.NewChannelTUN()}
	h.dev = device.NewDevice(h.tun.TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(h.dev.Close)
	if err := h.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=0\n", hex.EncodeToString(key[:]))); err != nil {
		t.Fatal(err)
	}
	if err := h.dev.Up(); err != nil {
		t.Fatal(err)
	}
	return h
}

// peer makes other a peer of h at endpoint, with other's subnet.
func (h *host) peer(t *testing.T, other *host, endpoint netip.AddrPort, subnet string) {
	t.Helper()
	pub := other.key.Public()
	if err := h.dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=%s\nallowed_ip=%s\npersistent_keepalive_interval=1\n",
		hex.EncodeToString(pub[:]), endpoint, subnet)); err != nil {
		t.Fatal(err)
	}
}

// pings sends pings from h (src) to dst until one arrives on to's TUN.
func pings(t *testing.T, h, to *host, src, dst netip.Addr) {
	t.Helper()
	want := tuntest.Ping(dst, src)
	deadline := time.After(15 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case h.tun.Outbound <- want:
		case got := <-to.tun.Inbound:
			if bytes.Equal(got, want) {
				return
			}
		case <-tick.C:
		case <-deadline:
			t.Fatalf("no ping from %s reached %s through the relay in 15s", src, dst)
		}
	}
}

// TestForwarder: two real wireguard-go hosts whose only path is the
// relay's port for their pair reach each other; the relay learns each
// end's address from its handshake, drops what is no WireGuard message
// of the pair, and forwards the pair's datagrams unchanged (it holds no
// key that could read them).
func TestForwarder(t *testing.T) {
	a, b := newHost(t), newHost(t)
	// The base port is held by another program: the pair gets the next.
	base := freePort(t)
	held, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), base)))
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", base, err)
	}
	defer held.Close()
	f := New(netip.MustParseAddr("127.0.0.1"), base, slog.New(slog.DiscardHandler))
	defer f.Close()
	pair := Pair{{Lease: "10.5.1.0-24", Key: a.key.Public()}, {Lease: "10.5.2.0-24", Key: b.key.Public()}}
	got, err := f.Set([]Pair{pair})
	if err != nil || got[pair] <= base {
		t.Fatalf("Set: %v, %v; want a port above the held %d", got, err, base)
	}
	port := got[pair]
	relayAt := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)

	// Noise first: random datagrams, and an initiation made for neither
	// end, before the ends have spoken.
	stranger, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(relayAt))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	other, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	third, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	src, err := wireguardtest.NewInitiationSource(other, third.Public())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	initiation, err := src.Next()
	if err != nil {
		t.Fatal(err)
	}
	stranger.Write([]byte("not wireguard"))
	stranger.Write(initiation)
	stranger.Write(append([]byte{4, 0, 0, 0}, make([]byte, 60)...))

	a.peer(t, b, relayAt, "10.5.2.0/24")
	b.peer(t, a, relayAt, "10.5.1.0/24")
	pings(t, a, b, netip.MustParseAddr("10.5.1.1"), netip.MustParseAddr("10.5.2.1"))
	pings(t, b, a, netip.MustParseAddr("10.5.2.1"), netip.MustParseAddr("10.5.1.1"))

	c := f.Counters()
	if c.Forwarded == 0 || c.NotWireGuard < 2 || c.UnknownEnd < 1 {
		t.Errorf("counters %+v: want forwarded datagrams, 2 not WireGuard (text, initiation for neither end), 1 transport from no end", c)
	}

	// The pair gone from the relay's leases: its port closes.
	if got, err := f.Set(nil); err != nil || len(got) != 0 {
		t.Errorf("Set(nil): %v, %v", got, err)
	}
	if l, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(relayAt)); err != nil {
		t.Errorf("the pair's port is still held: %v", err)
	} else {
		l.Close()
	}
}

// TestRoute: a transport message goes to the end its receiver index
// names (learnt from handshakes), and its sender is then where it came
// from (a NAT that mapped it anew); one whose index no handshake named
// is dropped; a pair's bytes beyond PairRate a second are dropped.
func TestRoute(t *testing.T) {
	a, b := mustKey(t), mustKey(t)
	f := New(netip.Addr{}, 0, slog.New(slog.DiscardHandler))
	s := &pairSocket{f: f, pair: Pair{{Key: a.Public()}, {Key: b.Public()}}}
	for i, e := range s.pair {
		s.mac1[i].Init(device.NoisePublicKey(e.Key))
	}
	aAt := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 1000)
	bAt := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), 2000)
	s.at = [2]netip.AddrPort{aAt, bAt}
	s.noteIndex(0, 0x0a0a)
	s.noteIndex(1, 0x0b0b)
	transport := func(receiver uint32) []byte {
		msg := make([]byte, 1404)
		msg[0] = 4
		binary.LittleEndian.PutUint32(msg[4:], receiver)
		return msg
	}
	now := time.Now()
	toB := transport(0x0b0b)
	sent := 0
	for range PairRate/len(toB) + 10 {
		if to, ok := s.route(toB, aAt.Addr(), aAt.Port(), now); ok {
			if to != bAt {
				t.Fatalf("a's datagram went to %s, want b at %s", to, bAt)
			}
			sent += len(toB)
		}
	}
	if sent > PairRate || f.overRate.Load() == 0 {
		t.Errorf("%d bytes forwarded in one second, %d over rate; the bound is %d", sent, f.overRate.Load(), PairRate)
	}
	later := now.Add(2 * time.Second)
	if _, ok := s.route(transport(0x0c0c), aAt.Addr(), aAt.Port(), later); ok {
		t.Error("a transport datagram whose receiver index no handshake named was forwarded")
	}
	// a's NAT maps it anew: its next message to b comes from elsewhere.
	moved := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 1001)
	if to, ok := s.route(toB, moved.Addr(), moved.Port(), later); !ok || to != bAt {
		t.Errorf("a's datagram from its new mapping went to %v (%v), want b at %s", to, ok, bAt)
	}
	if to, ok := s.route(transport(0x0a0a), bAt.Addr(), bAt.Port(), later); !ok || to != moved {
		t.Errorf("b's datagram went to %v (%v), want a at its new mapping %s", to, ok, moved)
	}
}

func mustKey(t *testing.T) keys.Key {
	t.Helper()
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// freePort is a UDP port on loopback free a moment ago.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint16(l.LocalAddr().(*net.UDPAddr).Port)
}
