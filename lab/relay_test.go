package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// TestNATToNATRelay: hosts 3 and 4 each behind a NAT router that maps
// every destination to a new port (no direct path can open), hosts 1 and 2
// public. Hosts 3 and 4 reach each other through a relay both reach (the
// public host with the lowest lease key), which forwards their ciphertext
// and never sees their packets in clear (checkCiphertextOnly). The relay's
// weftd is killed, its lease and link left up: within 10 s the pair
// reaches each other again. The relay's link goes down: within 10 s the
// pair goes through the other public host. The NATs then keep ports: the
// pair goes direct within 30 s. The NATs then remap every destination to a
// new port under the running direct pair: within 10 s the pair goes
// through a relay again, and stays there with no ping lost.
func TestNATToNATRelay(t *testing.T) {
	l := newLab(t, Options{Hosts: 4, NATHosts: 2, Backend: backends.WireGuard})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h3, h4 := l.Hosts[2], l.Hosts[3]
	eventually(t, "full ping matrix with hosts 3 and 4 behind NATs", 60*time.Second, func() error {
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	relay, other := l.Hosts[0], l.Hosts[1]
	if lease.SubnetKey(other.Subnet) < lease.SubnetKey(relay.Subnet) {
		relay, other = other, relay
	}
	// The pair may start through whichever relay both ends name first,
	// and moves to the lowest once both name it (their reach converges
	// within seconds of the first handshakes).
	eventually(t, "hosts 3 and 4 through the relay with the lowest lease key", 20*time.Second, func() error {
		want := "relay " + lease.SubnetKey(relay.Subnet)
		if a, b := viaOf(t, h3, h4), viaOf(t, h4, h3); a != want || b != want {
			return fmt.Errorf("h3 reaches h4 via %q, h4 reaches h3 via %q, want %q", a, b, want)
		}
		return nil
	})

	checkCiphertextOnly(t, l, relay, h3, h4)
	checkForgedSightings(t, l, relay, other, h3, h4)

	// The relay's weftd is killed, its lease and link left up.
	l.StopWeftd(relay, syscall.SIGKILL)
	start := time.Now()
	eventually(t, "hosts 3 and 4 again with the relay's weftd gone", 10*time.Second, func() error {
		return l.Ping(h3, h4)
	})
	reliability(t, "relay's weftd killed: hosts behind NATs reached each other again after %s (via %s)",
		time.Since(start).Round(100*time.Millisecond), viaOf(t, h3, h4))
	// wireguard-go went with weftd, so the pair went through the other
	// relay; kernel WireGuard (the VM tier) forwards on without weftd, and
	// the pair may stay. weftd comes back; its link is cut next.
	if via := viaOf(t, h3, h4); via != "relay "+lease.SubnetKey(relay.Subnet) && via != "relay "+lease.SubnetKey(other.Subnet) {
		t.Errorf("h3 reaches h4 via %q with the relay's weftd gone, want one of the relays", via)
	}
	if err := l.StartWeftd(relay); err != nil {
		t.Fatal(err)
	}

	if _, err := Exec(relay.Name, "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	eventually(t, "hosts 3 and 4 through the other relay", 10*time.Second, func() error {
		return l.Ping(h3, h4)
	})
	reliability(t, "relay gone: hosts behind NATs reached each other again after %s", time.Since(start).Round(100*time.Millisecond))
	checkVia(t, h3, h4, "relay "+lease.SubnetKey(other.Subnet))

	setNATs(t, false, h3, h4)
	start = time.Now()
	eventually(t, "hosts 3 and 4 direct once their NATs keep ports", 30*time.Second, func() error {
		if via := viaOf(t, h3, h4); via != "direct" {
			return fmt.Errorf("h3 reaches h4 via %q", via)
		}
		return l.Ping(h3, h4)
	})
	reliability(t, "NATs now keep ports: hosts behind them went direct after %s", time.Since(start).Round(100*time.Millisecond))
	checkVia(t, h4, h3, "direct")

	// The NATs change their mappings under the running direct pair and
	// map every destination to a new port again: the direct path is
	// dead, and the pair moves to a relay within 10 s.
	setNATs(t, true, h3, h4)
	start = time.Now()
	eventually(t, "hosts 3 and 4 through a relay after their direct path died", 10*time.Second, func() error {
		if via := viaOf(t, h3, h4); !strings.HasPrefix(via, "relay ") {
			return fmt.Errorf("h3 reaches h4 via %q", via)
		}
		return l.Ping(h3, h4)
	})
	reliability(t, "direct path died under the pair: through a relay after %s", time.Since(start).Round(100*time.Millisecond))
	// And it stays there: the dead direct path does not draw it back.
	steady := holdSteady(t, l, h3, h4, 15*time.Second)
	reliability(t, "relayed pair held 15 s: %d path changes %v, %d lease rewrites, %d of %d pings lost",
		steady.pathChanges, steady.paths, steady.rewrites, steady.lost, steady.sent)
	if steady.pathChanges != 0 || steady.lost != 0 || steady.sent == 0 {
		t.Errorf("the relayed pair did not stay put: %d path changes %v, %d of %d pings lost; leases written:\n%s",
			steady.pathChanges, steady.paths, steady.lost, steady.sent, strings.Join(steady.written, "\n"))
	}
}

// setNATs makes the NAT routers of hosts map every destination to a new
// port (random) or keep source ports, and forgets their mappings, as a
// router that restarts or a carrier-grade NAT that remaps does.
func setNATs(t *testing.T, random bool, hosts ...*Host) {
	t.Helper()
	for _, h := range hosts {
		rule := []string{"ip", "netns", "exec", h.NAT, "iptables", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "eth0", "-j", "MASQUERADE"}
		if random {
			rule = append(rule, "--random")
		}
		if err := RunAll(rule); err != nil {
			t.Fatal(err)
		}
		if err := inNetns(h.NAT, func() error { return netlink.ConntrackTableFlush(netlink.ConntrackTable) }); err != nil {
			t.Fatal(err)
		}
	}
}

// checkForgedSightings: issue 41. A lease written to etcd by someone who
// runs no host sights both public hosts at their own endpoints (before,
// any sighting marked a host as behind NAT: every relayed pair then left
// the public hosts, and every host kept them open with keepalives). The
// pair stays with its relay, and no host makes either public host eager.
func checkForgedSightings(t *testing.T, l *Lab, relay, other, h3, h4 *Host) {
	t.Helper()
	ctx := context.Background()
	key := freeSubnets(l, 1, 24)[0]
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820},`+
		`"WeftSeen":[{"Lease":%q,"Endpoint":"%s:51820"},{"Lease":%q,"Endpoint":"%s:51820"}]}`, l.underlayAddr(250), k.Public(),
		lease.SubnetKey(relay.Subnet), relay.PublicIP, lease.SubnetKey(other.Subnet), other.PublicIP)
	if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
		t.Fatal(err)
	}
	defer l.Store().Delete(ctx, key)
	time.Sleep(4 * time.Second) // every host has applied it, and observed twice
	want := "relay " + lease.SubnetKey(relay.Subnet)
	checkVia(t, h3, h4, want)
	checkVia(t, h4, h3, want)
	for _, pair := range [][2]*Host{{other, relay}, {relay, other}} {
		out, err := l.HostExec(pair[0], "wg", "show", "weft-wg", "persistent-keepalive")
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(out) {
			if f := strings.Fields(line); len(f) == 2 && f[0] == publicKeyOf(t, pair[1]) && f[1] != "off" {
				t.Errorf("%s keeps %s open every %s s after a forged sighting", pair[0].Name, pair[1].Name, f[1])
			}
		}
	}
}

// viaOf is how from's weftd says it reaches to (status Via).
func viaOf(t *testing.T, from, to *Host) string {
	t.Helper()
	out, err := Exec(from.Name, weftctlBin, "status", "-o", "json")
	if err != nil {
		return ""
	}
	var s struct {
		Peers []struct{ Lease, Via string }
	}
	if json.Unmarshal([]byte(out), &s) != nil {
		return ""
	}
	for _, p := range s.Peers {
		if p.Lease == lease.SubnetKey(to.Subnet) {
			return p.Via
		}
	}
	return ""
}

func checkVia(t *testing.T, from, to *Host, want string) {
	t.Helper()
	if via := viaOf(t, from, to); !strings.HasPrefix(via, want) {
		t.Errorf("%s reaches %s via %q, want %q", from.Name, to.Name, via, want)
	}
}

// wireGuardOnly is a pcap filter for the UDP datagrams to or from a
// relay's pair ports that are no WireGuard message: the first payload
// word (udp[8:4], read big-endian) of a WireGuard message is its type
// 1-4 in little-endian, three zero bytes after it.
func wireGuardOnly(ports string) (all, other string) {
	all = "udp portrange " + ports
	return all, all + " and not (udp[8:4] = 0x01000000 or udp[8:4] = 0x02000000 or udp[8:4] = 0x03000000 or udp[8:4] = 0x04000000)"
}

// checkCiphertextOnly: issue 41. While hosts 3 and 4 go through relay,
// pings every 200 ms both ways and a TCP stream pass, and the relay only
// forwards ciphertext: its pair ports carry WireGuard messages and
// nothing else, and the pair's container addresses appear on none of its
// interfaces (its WireGuard device included): it holds no session of
// theirs, so it never sees their packets in clear.
func checkCiphertextOnly(t *testing.T, l *Lab, relay, h3, h4 *Host) {
	t.Helper()
	all, other := wireGuardOnly("51830-51957")
	forwarded, err := l.CaptureOn(relay.Name, "eth0", all, "relay-ports")
	if err != nil {
		t.Fatal(err)
	}
	notWireGuard, err := l.CaptureOn(relay.Name, "eth0", other, "relay-not-wireguard")
	if err != nil {
		t.Fatal(err)
	}
	clear, err := l.CaptureOn(relay.Name, "any", fmt.Sprintf("host %s or host %s", h3.ContainerIP(), h4.ContainerIP()), "relay-clear")
	if err != nil {
		t.Fatal(err)
	}
	// Pings first, then a TCP stream: under the VM tier's emulation a
	// stream at full speed beside them costs pings to CPU, not to the
	// path.
	wait34, wait43 := pingFor(h3, h4, 5*time.Second), pingFor(h4, h3, 5*time.Second)
	sent34, lost34 := wait34()
	sent43, lost43 := wait43()
	stream, err := l.StartStream(h3, h4, 7411)
	if err != nil {
		t.Fatalf("a TCP stream from h3 to h4 through the relay: %v", err)
	}
	time.Sleep(2 * time.Second)
	res, streamErr := stream.Stop()
	_, forwardedText, _ := forwarded.Stop()
	_, otherText, _ := notWireGuard.Stop()
	_, clearText, _ := clear.Stop()
	reliability(t, "relayed (ciphertext only): h3 -> h4 %d of %d lost, h4 -> h3 %d of %d lost, TCP %d bytes, %d datagrams forwarded",
		lost34, sent34, lost43, sent43, res.Received, strings.Count(forwardedText, "\n"))
	if sent34 == 0 || sent43 == 0 || lost34 != 0 || lost43 != 0 {
		t.Errorf("pings lost through the relay: h3 -> h4 %d of %d, h4 -> h3 %d of %d", lost34, sent34, lost43, sent43)
	}
	if streamErr != nil || res.Received == 0 {
		t.Errorf("the TCP stream through the relay: %d bytes, %v", res.Received, streamErr)
	}
	if strings.Count(forwardedText, "\n") < 2*sent34 {
		t.Errorf("the relay's pair ports carried %d datagrams while %d pings went each way: the pair is not forwarded there\n%s",
			strings.Count(forwardedText, "\n"), sent34, firstLines(forwardedText, 10))
	}
	if otherText != "" {
		t.Errorf("the relay's pair ports carried datagrams that are no WireGuard message:\n%s", firstLines(otherText, 10))
	}
	if clearText != "" {
		t.Errorf("the pair's container addresses appear on the relay's interfaces (it sees their traffic in clear):\n%s", firstLines(clearText, 10))
	}
	// weftctl status on the relay says what it forwards, and for whom.
	out, err := Exec(relay.Name, weftctlBin, "status", "-o", "json")
	var st struct {
		Relay *struct {
			Pairs []struct {
				Ends [2]string
				Port int
			}
			Forwarded uint64
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &st) != nil || st.Relay == nil || len(st.Relay.Pairs) != 1 || st.Relay.Forwarded == 0 {
		t.Errorf("the relay's status does not show one pair forwarded (%v):\n%s", err, out)
	} else if ends := st.Relay.Pairs[0].Ends; !(ends[0] == lease.SubnetKey(h3.Subnet) && ends[1] == lease.SubnetKey(h4.Subnet) ||
		ends[1] == lease.SubnetKey(h3.Subnet) && ends[0] == lease.SubnetKey(h4.Subnet)) {
		t.Errorf("the relay's status names the pair %v, want hosts 3 and 4", ends)
	}
}

// firstLines is at most n lines of text.
func firstLines(text string, n int) string {
	lines := strings.SplitAfter(text, "\n")
	return strings.Join(lines[:min(n, len(lines))], "")
}
