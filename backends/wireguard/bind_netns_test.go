//go:build netns

package wireguard

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
)

// TestWireGuardGoBindMixedFamiliesInNetns shows the wireguard-go bug behind
// MixedFamilies' warning, on the bind a userspace device uses: an IPv6
// send that follows an IPv4 send does not reach its address, while the
// same sends without the IPv4 one in between do. When it fails because
// the IPv6 packet arrives, wireguard-go has mended its bind: drop the
// warning (and this test).
func TestWireGuardGoBindMixedFamiliesInNetns(t *testing.T) {
	ns := netkerneltest.NewNetns(t)
	for _, a := range []string{"fd00::1/128", "fd00::2/128"} {
		ns.Run(t, "ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	ns.Enter(t)
	listen := func(addr string) *net.UDPConn {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	first, second, v4 := listen("[fd00::1]:7001"), listen("[fd00::2]:7002"), listen("127.0.0.1:7003")
	bind := conn.NewStdNetBind()
	if _, _, err := bind.Open(0); err != nil {
		t.Fatal(err)
	}
	defer bind.Close()
	send := func(to, msg string) {
		t.Helper()
		ep, err := bind.ParseEndpoint(to)
		if err != nil {
			t.Fatal(err)
		}
		if err := bind.Send([][]byte{[]byte(msg)}, ep); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
	}
	// count reads what arrives at c until want packets came or a second
	// passed (loopback delivery can lag on a loaded machine).
	count := func(c *net.UDPConn, want int) int {
		got, buf := 0, make([]byte, 64)
		deadline := time.Now().Add(time.Second)
		for got < want || want == 0 {
			c.SetReadDeadline(deadline)
			if _, err := c.Read(buf); err != nil {
				break
			}
			got++
		}
		return got
	}
	const rounds = 5

	// IPv6 sends alone arrive: the setup works.
	for range rounds {
		send("[fd00::1]:7001", "to fd00::1")
		send("[fd00::2]:7002", "to fd00::2")
	}
	if a, b := count(first, rounds), count(second, rounds); a != rounds || b != rounds {
		t.Fatalf("IPv6 sends alone: %d of %d reached fd00::1, %d of %d fd00::2", a, rounds, b, rounds)
	}
	// An IPv4 send in between: the IPv6 send after it is lost (each round
	// is the bug as long as the send finds the address buffer the IPv4 one
	// left in the pool, which it does unless the goroutine moved between).
	for range rounds {
		send("[fd00::1]:7001", "to fd00::1")
		send("127.0.0.1:7003", "to 127.0.0.1")
		send("[fd00::2]:7002", "to fd00::2 after an IPv4 send")
	}
	if got := count(v4, rounds); got != rounds {
		t.Fatalf("%d of %d IPv4 sends arrived", got, rounds)
	}
	a, b := count(first, rounds), count(second, rounds)
	t.Logf("after IPv4 sends: %d of %d IPv6 packets reached fd00::2 (fd00::1: %d of %d)", b, rounds, a, rounds)
	if b == rounds {
		t.Errorf("every IPv6 send after an IPv4 one arrived: wireguard-go's bind no longer loses them; drop MixedFamilies' warning")
	}
}
