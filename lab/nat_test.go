package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// natConfig is a wireguard network whose hosts send keepalives, as a host
// behind NAT must to keep its mapping (and to be found at all).
const natConfig = `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":5}}`

// TestWireGuardBehindNAT: a host behind a NAT router that changes the
// source port (MASQUERADE --random) publishes its private address, which
// no other host can reach; WireGuard finds its real address and port from
// its handshakes, and weft keeps that roamed endpoint across resyncs (the
// lab resyncs every 2 s) instead of writing the lease's back: 0 pings lost
// either way over 4 resyncs.
func TestWireGuardBehindNAT(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, NATHosts: 1, Backend: backends.WireGuard, Config: natConfig})
	h1, h3 := l.Hosts[0], l.Hosts[2]
	out, err := l.HostExec(h1, "wg", "show", "weft-wg", "endpoints")
	if err != nil {
		t.Fatal(err)
	}
	router := l.underlayAddr(10 + h3.Index).String()
	var endpoint string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && strings.HasPrefix(f[1], router+":") {
			endpoint = f[1]
		}
	}
	if endpoint == "" || endpoint == router+":51820" {
		t.Fatalf("h1's endpoints %q: want h3 at its router %s with a port the NAT chose", out, router)
	}
	t.Logf("h3 (lease: %s:51820) is reached at %s", h3.PublicIP, endpoint)
	wait1, wait3 := pingFor(h1, h3, 8*time.Second), pingFor(h3, h1, 8*time.Second)
	sent1, lost1 := wait1()
	sent3, lost3 := wait3()
	reliability(t, "host behind NAT, 4 resyncs: h1 -> h3 %d of %d lost, h3 -> h1 %d of %d lost", lost1, sent1, lost3, sent3)
	if sent1 == 0 || sent3 == 0 || lost1 != 0 || lost3 != 0 {
		t.Errorf("pings lost across resyncs: h1 -> h3 %d of %d, h3 -> h1 %d of %d", lost1, sent1, lost3, sent3)
	}
}

// TestWireGuardBehindNATOnDemand: with on-demand peers, a host behind NAT
// reaches the others without being told it is behind NAT: its handshakes
// come from its router's address, not its lease's, and still configure it,
// since each proves its key (issue 41; before, a source address other than
// the lease's configured nothing). With -behind-nat every peer configures
// it eagerly, keeps it when idle (with the endpoint it roamed to), and
// traffic flows both ways with nothing lost across resyncs.
func TestWireGuardBehindNATOnDemand(t *testing.T) {
	config := `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Implementation":"userspace","OnDemandPeers":"on","OnDemandIdleAfter":3}}`
	l := newLab(t, Options{Hosts: 3, NATHosts: 1, Backend: backends.WireGuard, Config: config})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	if _, err := Exec(h3.Container, "ping", "-c", "1", "-W", "3", h1.ContainerIP().String()); err != nil {
		t.Errorf("h3 behind NAT, without -behind-nat, did not reach an idle h1 in on-demand mode at the first ping: %v", err)
	}
	l.StopWeftd(h3, syscall.SIGTERM)
	if err := l.StartWeftd(h3, "-behind-nat"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(context.Background(), h3); err != nil {
		t.Fatal(err)
	}
	records, _, _ := l.Store().List(context.Background())
	for _, r := range records {
		if r.Key == lease.SubnetKey(h3.Subnet) && !strings.Contains(string(r.Value), `"NAT":true`) {
			t.Errorf("h3's lease does not say it is behind NAT: %s", r.Value)
		}
	}
	eventually(t, "full ping matrix with h3 behind NAT", 30*time.Second, func() error {
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	wait1, wait3 := pingFor(h1, h3, 8*time.Second), pingFor(h3, h1, 8*time.Second)
	sent1, lost1 := wait1()
	sent3, lost3 := wait3()
	if sent1 == 0 || sent3 == 0 || lost1 != 0 || lost3 != 0 {
		t.Errorf("pings lost: h1 -> h3 %d of %d, h3 -> h1 %d of %d", lost1, sent1, lost3, sent3)
	}
	// Two idle periods without traffic: h1 drops h2, keeps h3.
	time.Sleep(6 * time.Second)
	peers, _ := wgPeers(l, h1)
	if !strings.Contains(peers, publicKeyOf(t, h3)) || strings.Contains(peers, publicKeyOf(t, h2)) {
		t.Errorf("h1 holds %q: want h3 (behind NAT) kept and the idle h2 dropped", peers)
	}
	// And h3 is still reached from h1 (h3 dropped h1 meanwhile: the
	// first echo may meet h3 without a session, so allow three).
	eventually(t, "h1 -> h3 after the idle period", 5*time.Second, func() error { return l.Ping(h1, h3) })
}

// TestWireGuardDirectRouting: with DirectRouting, hosts on one underlay
// network carry container traffic by plain routes via their PublicIP, as
// host-gw (the capture shows it in clear, nothing on WireGuard's port),
// while a host elsewhere (behind its own router) goes through WireGuard
// (nothing in clear); every pair reaches every other.
func TestWireGuardDirectRouting(t *testing.T) {
	config := `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","DirectRouting":true,"PersistentKeepaliveInterval":5}}`
	l := startCluster(t, Options{Hosts: 3, NATHosts: 1, Backend: backends.WireGuard, Config: config})
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	if out, _ := routeTo(h1, h2.Subnet.String()); !strings.Contains(out, "via "+h2.PublicIP.String()+" dev eth0") {
		t.Errorf("h1's route to h2's subnet is %q, want via %s dev eth0", out, h2.PublicIP)
	}
	if out, _ := routeTo(h1, h3.Subnet.String()); out != "" {
		t.Errorf("h1 routes h3's subnet plainly: %q", out)
	}
	peers, _ := wgPeers(l, h1)
	if !strings.Contains(peers, publicKeyOf(t, h3)) || strings.Contains(peers, publicKeyOf(t, h2)) {
		t.Errorf("h1's WireGuard peers %q: want h3 only", peers)
	}
	pattern := "deadbeefcafef00d0123456789abcdef"
	for _, tt := range []struct {
		to    *Host
		clear bool
	}{{h2, true}, {h3, false}} {
		capture, err := l.CaptureUnderlay("direct")
		if err != nil {
			t.Fatal(err)
		}
		_, perr := Exec(h1.Container, "ping", "-c", "3", "-i", "0.2", "-p", pattern, tt.to.ContainerIP().String())
		raw, decoded, err := capture.Stop()
		if perr != nil || err != nil {
			t.Fatalf("ping %s: %v, capture %v", tt.to.Name, perr, err)
		}
		needle, _ := hex.DecodeString(pattern)
		if bytes.Contains(raw, needle) != tt.clear {
			t.Errorf("h1 -> %s: payload in clear on the underlay = %v, want %v:\n%s", tt.to.Name, !tt.clear, tt.clear, decoded)
		}
		// WireGuard between h1 and the peer itself; h3 behind its router
		// keeps its own session with h1 alive meanwhile, which is not this
		// pair's traffic.
		if tt.clear && wireGuardBetween(decoded, h1.PublicIP.String(), tt.to.PublicIP.String()) {
			t.Errorf("h1 -> %s went through WireGuard:\n%s", tt.to.Name, decoded)
		}
	}
}

// wireGuardBetween reports whether tcpdump's lines show a WireGuard
// datagram (to or from port 51820) between addresses a and b.
func wireGuardBetween(decoded, a, b string) bool {
	for _, line := range strings.Split(decoded, "\n") {
		if strings.Contains(line, ".51820") && strings.Contains(line, " "+a+".") && strings.Contains(line, " "+b+".") {
			return true
		}
	}
	return false
}
