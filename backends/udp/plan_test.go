package udp

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

func peers() mesh.Desired {
	mk := func(subnet, ip string) mesh.Peer {
		return mesh.Peer{Key: subnet, Subnet: netip.MustParsePrefix(subnet), PublicIP: netip.MustParseAddr(ip), BackendType: "udp"}
	}
	return mesh.Desired{Self: lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")},
		Peers: []mesh.Peer{mk("10.5.2.0/24", "192.168.50.12"), mk("10.5.3.0/24", "192.168.50.13")}}
}

// ipv4 builds a minimal IPv4 packet from src to dst with payload bytes.
func ipv4(src, dst string, payload int) []byte {
	pkt := make([]byte, 20+payload)
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	pkt[9] = 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	return pkt
}

func TestRoute(t *testing.T) {
	tab := NewTable(peers(), 24, 8285)
	for dst, want := range map[string]string{"10.5.2.77": "192.168.50.12:8285", "10.5.3.1": "192.168.50.13:8285", "10.5.4.1": "", "10.6.2.1": ""} {
		p, ok := tab.Route(ipv4("10.5.1.2", dst, 8))
		got := ""
		if ok {
			got = p.Endpoint.String()
		}
		if got != want {
			t.Errorf("Route(%s) = %q, want %q", dst, got, want)
		}
	}
	if _, ok := tab.Route([]byte{0x60, 0, 0}); ok {
		t.Error("routed a truncated non-IPv4 packet")
	}
}

func TestAccept(t *testing.T) {
	tab := NewTable(peers(), 24, 8285)
	peer := netip.MustParseAddrPort("192.168.50.12:8285")
	good := ipv4("10.5.2.9", "10.5.1.2", 40)
	short := good[:30] // length field says 60
	badIHL := append([]byte(nil), good...)
	badIHL[0] = 0x44
	v6 := append([]byte(nil), good...)
	v6[0] = 0x60
	tests := []struct {
		name string
		src  netip.AddrPort
		pkt  []byte
		want string
	}{
		{"known peer, own subnet", peer, good, ""},
		{"v4-mapped source address", netip.AddrPortFrom(netip.AddrFrom16(peer.Addr().As16()), 8285), good, ""},
		{"unknown address", netip.MustParseAddrPort("192.168.50.99:8285"), good, DropUnknownPeer},
		{"known address, wrong port", netip.MustParseAddrPort("192.168.50.12:9999"), good, DropUnknownPeer},
		{"spoofed inner source (other peer's subnet)", peer, ipv4("10.5.3.9", "10.5.1.2", 40), DropSpoofed},
		{"spoofed inner source (outside the Network)", peer, ipv4("8.8.8.8", "10.5.1.2", 40), DropSpoofed},
		{"truncated", peer, short, DropMalformed},
		{"too short for a header", peer, good[:12], DropMalformed},
		{"empty", peer, nil, DropMalformed},
		{"header length below 20", peer, badIHL, DropMalformed},
		{"not IPv4", peer, v6, DropMalformed},
		{"to the internet", peer, ipv4("10.5.2.9", "8.8.8.8", 40), DropNotForHost},
		{"to the host's underlay address", peer, ipv4("10.5.2.9", "192.168.50.11", 40), DropNotForHost},
		{"to another peer's subnet", peer, ipv4("10.5.2.9", "10.5.3.7", 40), DropNotForHost},
		{"to the limited broadcast", peer, ipv4("10.5.2.9", "255.255.255.255", 40), DropNotForHost},
		{"to this host's subnet broadcast", peer, ipv4("10.5.2.9", "10.5.1.255", 40), ""},
	}
	for _, tt := range tests {
		if got := tab.Accept(tt.src, tt.pkt); got != tt.want {
			t.Errorf("%s: Accept = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func FuzzAccept(f *testing.F) {
	tab := NewTable(peers(), 24, 8285)
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 5, 2, 1, 10, 5, 1, 1}, uint16(8285))
	f.Add([]byte{}, uint16(1))
	f.Fuzz(func(t *testing.T, pkt []byte, port uint16) {
		src := netip.AddrPortFrom(netip.MustParseAddr("192.168.50.12"), port)
		if tab.Accept(src, pkt) == "" {
			// Whatever passes must be a whole IPv4 packet from the peer's subnet.
			if port != 8285 || len(pkt) < 20 || int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) ||
				!netip.MustParsePrefix("10.5.2.0/24").Contains(netip.AddrFrom4([4]byte(pkt[12:16]))) {
				t.Fatalf("accepted %x from port %d", pkt, port)
			}
		}
		tab.Route(pkt)
	})
}

func TestParseOptions(t *testing.T) {
	if o, err := ParseOptions(nil); err != nil || o.Port != 8285 {
		t.Fatalf("defaults %+v %v", o, err)
	}
	if _, err := ParseOptions([]byte(`{"Port":70000}`)); err == nil {
		t.Fatal("accepted port 70000")
	}
}
