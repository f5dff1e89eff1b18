package lab

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

func TestIPMasqAndCleanup(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: lease.BackendHostGW, WeftdArgs: []string{"-ip-masq", "-iptables-resync", "1"}})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	outside := netip.AddrPortFrom(l.underlayAddr(1), 7000) // the underlay's gateway, outside the Network

	t.Run("leaving the Network is masqueraded, inside it is not", func(t *testing.T) {
		got, err := ReceiveUDP(l.Underlay, outside, time.Second, func() {
			if err := SendUDP(h1.Container, outside, []byte("out")); err != nil {
				t.Error(err)
			}
		})
		if err != nil || len(got) != 1 || !strings.Contains(got[0], "from "+h1.PublicIP.String()+":") {
			t.Errorf("outside receiver got %v (%v), want one datagram from %s", got, err, h1.PublicIP)
		}
		inside := netip.AddrPortFrom(h2.ContainerIP(), 7001)
		got, err = ReceiveUDP(h2.Container, inside, time.Second, func() {
			if err := SendUDP(h1.Container, inside, []byte("in")); err != nil {
				t.Error(err)
			}
		})
		if err != nil || len(got) != 1 || !strings.Contains(got[0], "from "+h1.ContainerIP().String()+":") {
			t.Errorf("container receiver got %v (%v), want one datagram from %s", got, err, h1.ContainerIP())
		}
	})

	t.Run("rules deleted by hand come back", func(t *testing.T) {
		for _, args := range [][]string{
			{"iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "weft masq", "-j", "WEFT-POSTRTG"},
			{"iptables", "-t", "nat", "-F", "WEFT-POSTRTG"},
			{"iptables", "-t", "filter", "-F", "WEFT-FWD"},
		} {
			if _, err := Exec(h1.Name, args...); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		eventually(t, "rules restored", 10*time.Second, func() error {
			out, _ := Exec(h1.Name, "iptables-save")
			for _, want := range []string{`-A POSTROUTING -m comment --comment "weft masq" -j WEFT-POSTRTG`, "-j MASQUERADE", `--comment "weft forward" -j ACCEPT`} {
				if !strings.Contains(out, want) {
					return fmt.Errorf("no %q yet", want)
				}
			}
			return nil
		})
		t.Logf("rules restored after %s (-iptables-resync 1)", time.Since(start).Round(time.Millisecond))
	})

	t.Run("weftctl cleanup leaves nothing of weft", func(t *testing.T) {
		l.StopWeftd(h1, syscall.SIGTERM)
		if out, err := Exec(h1.Name, weftctlBin, "cleanup", "-subnet-file", h1.SubnetFile()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, _ := Exec(h1.Name, "ip", "route", "show", "proto", "87"); out != "" {
			t.Errorf("routes left: %s", out)
		}
		if out, _ := Exec(h1.Name, "iptables-save"); strings.Contains(strings.ToLower(out), "weft") {
			t.Errorf("rules left:\n%s", out)
		}
		if out, _ := Exec(h1.Name, "ip", "-o", "link"); strings.Contains(out, "weft") {
			t.Errorf("devices left:\n%s", out)
		}
		if _, err := os.Stat(h1.SubnetFile()); err == nil {
			t.Error("subnet file left")
		}
	})
}
