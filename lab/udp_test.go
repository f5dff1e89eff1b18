package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
)

func TestUDPCluster(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.UDP})
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	t.Run("hostile leases reach no kernel", func(t *testing.T) { checkHostileLeases(t, l, backends.UDP) })

	t.Run("only known peers with their own subnet get in", func(t *testing.T) {
		rogue, rogueIP, err := l.AddRogue()
		if err != nil {
			t.Fatal(err)
		}
		target := netip.AddrPortFrom(h1.ContainerIP(), 7777)
		weftPort := func(h *Host) netip.AddrPort { return netip.AddrPortFrom(h.PublicIP, 8285) }
		send := func(ns string, from netip.AddrPort, innerSrc netip.Addr, msg string) func() {
			return func() {
				inner := InnerUDP(netip.AddrPortFrom(innerSrc, 5555), target, []byte(msg))
				if err := SendRawUDP(ns, from, weftPort(h1), inner); err != nil {
					t.Errorf("sending %s: %v", msg, err)
				}
			}
		}
		cases := []struct {
			name    string
			send    func()
			arrives bool
		}{
			// The control: proves a datagram that should arrive does.
			{"from peer h2, inner source in h2's subnet", send(h2.Name, weftPort(h2), h2.ContainerIP(), "honest"), true},
			{"from peer h2, inner source spoofed as h3's", send(h2.Name, weftPort(h2), h3.ContainerIP(), "spoofed"), false},
			{"from peer h2's address, wrong port", send(h2.Name, netip.AddrPortFrom(h2.PublicIP, 9999), h2.ContainerIP(), "wrongport"), false},
			{"from a namespace that is no peer", send(rogue, netip.AddrPortFrom(rogueIP, 8285), h2.ContainerIP(), "rogue"), false},
		}
		for _, c := range cases {
			got, err := ReceiveUDP(h1.Container, target, time.Second, c.send)
			if err != nil {
				t.Fatal(err)
			}
			if arrived := len(got) > 0; arrived != c.arrives {
				t.Errorf("%s: arrived=%v (%v), want %v", c.name, arrived, got, c.arrives)
			}
		}
		if log := h1.LogTail(50); !strings.Contains(log, "dropping datagrams") {
			t.Errorf("no log line about dropped datagrams:\n%s", log)
		}
	})

	t.Run("a peer's datagrams reach only this host's subnet", func(t *testing.T) {
		// Forged from peer h2's address and port with an honest inner
		// source: only the inner destination is wrong.
		forge := func(dst netip.AddrPort, msg string) func() {
			return func() {
				inner := InnerUDP(netip.AddrPortFrom(h2.ContainerIP(), 5555), dst, []byte(msg))
				if err := SendRawUDP(h2.Name, netip.AddrPortFrom(h2.PublicIP, 8285), netip.AddrPortFrom(h1.PublicIP, 8285), inner); err != nil {
					t.Errorf("sending %s: %v", msg, err)
				}
			}
		}
		for _, c := range []struct {
			name, ns string
			dst      netip.AddrPort
		}{
			{"h1's own underlay address", h1.Name, netip.AddrPortFrom(h1.PublicIP, 7777)},
			{"another peer's container", h3.Container, netip.AddrPortFrom(h3.ContainerIP(), 7777)},
		} {
			got, err := ReceiveUDP(c.ns, c.dst, time.Second, forge(c.dst, "forged-"+c.name))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) > 0 {
				t.Errorf("a forged datagram for %s arrived: %v", c.name, got)
			}
		}
		forge(netip.MustParseAddrPort("8.8.8.8:53"), "to-the-internet")()
		forge(netip.MustParseAddrPort("255.255.255.255:7777"), "broadcast")()
		eventually(t, "four datagrams dropped as not for this host", 5*time.Second, func() error {
			body, err := HTTPGet(h1.Name, "http://127.0.0.1:8471/status")
			if err != nil {
				return err
			}
			if !strings.Contains(body, `"not_for_this_host":4`) {
				return fmt.Errorf("status: %s", body)
			}
			return nil
		})
	})

	t.Run("TCP stream survives a restart", func(t *testing.T) {
		checkStream(t, l, h1, h2, 5004, "a restart of weftd (udp) on the sender", func() { restartWeftd(t, l, h1) })
		checkStream(t, l, h1, h2, 5005, "a restart of weftd (udp) on the receiver", func() { restartWeftd(t, l, h2) })
	})
}
