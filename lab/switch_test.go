package lab

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// pinger pings one container from another every 50 ms in the background.
type pinger struct {
	from, to *Host
	cmd      *exec.Cmd
	out      strings.Builder
}

func startPingers(t *testing.T, l *Lab) []*pinger {
	t.Helper()
	var out []*pinger
	for _, a := range l.Hosts {
		for _, b := range l.Hosts {
			if a == b {
				continue
			}
			out = append(out, startPinger(t, a, b, exec.Command("ip", "netns", "exec", a.Container, "ping", "-n", "-i", "0.05",
				b.ContainerIP().String())))
		}
	}
	return out
}

// startPinger starts cmd (a ping every 50 ms from a container on from to
// one on to), stopped when the test ends if stopPingers has not.
func startPinger(t *testing.T, from, to *Host, cmd *exec.Cmd) *pinger {
	t.Helper()
	p := &pinger{from: from, to: to, cmd: cmd}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// stopPingers stops the pingers and checks that each pair lost at most
// 1 % of its pings; it returns the worst loss seen, in pings.
func stopPingers(t *testing.T, pingers []*pinger, what string) int {
	t.Helper()
	worst := 0
	for _, p := range pingers {
		p.cmd.Process.Signal(syscall.SIGINT)
		p.cmd.Wait()
		m := pingSummary.FindStringSubmatch(p.out.String())
		if m == nil {
			t.Errorf("%s: no ping summary from %s to %s:\n%s", what, p.from.Name, p.to.Name, p.out.String())
			continue
		}
		sent, got := atoi(m[1]), atoi(m[2])
		lost := sent - got
		worst = max(worst, lost)
		if sent < 40 || lost*100 > sent {
			t.Errorf("%s: %s to %s lost %d of %d pings (more than 1 %%)", what, p.from.Name, p.to.Name, lost, sent)
		}
	}
	return worst
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// waitSwitched waits until every host's lease is backend's alone: its
// BackendType, no WeftAlso (the switch is over everywhere).
func waitSwitched(t *testing.T, l *Lab, backend string) {
	t.Helper()
	kind, _ := backends.Lookup(backend)
	want := lease.BackendConfig{Type: backend, Untyped: kind.Untyped}.LeaseType()
	eventually(t, "every lease is "+backend+"'s alone", 40*time.Second, func() error {
		for _, h := range l.Hosts {
			rec, ok, err := l.Store().Get(context.Background(), lease.DualSubnetKey(h.Subnet, h.IPv6Subnet))
			if err != nil || !ok {
				return fmt.Errorf("%s's lease: %v", h.Name, err)
			}
			if l, err := lease.DecodeLease(rec.Key, rec.Value); err != nil || l.Attrs.BackendType != want || len(l.Attrs.Also()) > 0 {
				return fmt.Errorf("%s's lease is %s", h.Name, rec.Value)
			}
		}
		return nil
	})
}

// switchLive puts a config with backend and waits until every host has
// switched, without restarting weftd, while every pair pings every 50 ms
// and every pair of hosts keeps a TCP stream: no stream breaks, no pair
// loses more than 1 % of its pings. It returns the longest stream gap.
func switchLive(t *testing.T, l *Lab, backend string, port int) time.Duration {
	t.Helper()
	pingers := startPingers(t, l)
	var streams []*Stream
	for i, a := range l.Hosts {
		for _, b := range l.Hosts[i+1:] {
			s, err := l.StartStream(a, b, port)
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, s)
			port++
		}
	}
	time.Sleep(time.Second)
	pids := map[string]int{}
	for _, h := range l.Hosts {
		pids[h.Name] = l.WeftdPID(h)
	}
	if err := l.PutConfig(context.Background(), fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, backend)); err != nil {
		t.Fatal(err)
	}
	waitSwitched(t, l, backend)
	time.Sleep(time.Second)
	stopPingers(t, pingers, "switch to "+backend)
	var gap time.Duration
	for _, s := range streams {
		res, err := s.Stop()
		if err != nil {
			t.Errorf("a TCP stream broke in the switch to %s: %v", backend, err)
		}
		gap = max(gap, res.MaxGap)
	}
	for _, h := range l.Hosts {
		if l.WeftdPID(h) != pids[h.Name] {
			t.Errorf("weftd on %s restarted in the switch to %s", h.Name, backend)
		}
	}
	reliability(t, "live switch to %s: longest TCP stream gap %s", backend, gap.Round(time.Millisecond))
	return gap
}

// TestLiveSwitch switches a running 4-host cluster between backends by
// changing the config in etcd alone: vxlan → wireguard → host-gw →
// wireguard → udp → wireguard → vxlan. At each step no TCP stream breaks and no pair loses
// more than 1 % of pings sent every 50 ms; on wireguard the underlay
// carries no container packet in clear, and the old devices are gone.
func TestLiveSwitch(t *testing.T) {
	l := startCluster(t, Options{Hosts: 4, Backend: backends.VXLAN})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	port := 7300
	for _, step := range []string{backends.WireGuard, backends.HostGW, backends.WireGuard, backends.UDP, backends.WireGuard, backends.VXLAN} {
		switchLive(t, l, step, port)
		port += 10
		if step == backends.WireGuard {
			checkEncrypted(t, l, h1, h2)
			// The containers keep the MTU they started with, vxlan's
			// 1450: a packet of that size with DF set passes whole (the
			// device carries it; WireGuard's outer packet leaves in
			// fragments), and so does a bulk transfer.
			if out, err := Exec(h1.Container, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", h2.ContainerIP().String()); err != nil {
				t.Errorf("a 1450-byte packet with DF set after the switch to wireguard: %v\n%s", err, out)
			}
			checkBulk(t, l, h1, h2)
			for _, h := range l.Hosts {
				if out, err := Exec(h.Name, "ip", "-o", "link", "show", "weft.1"); err == nil {
					t.Errorf("the vxlan device stays on %s after the switch: %s", h.Name, out)
				}
			}
		}
	}
	if out, err := Exec(h1.Name, "ip", "link", "show", "weft-wg"); err == nil {
		t.Errorf("weft-wg left after switching back to vxlan: %s", out)
	}
}

// checkBulk sends 32 MB from a's container to b's with iperf3 as fast as
// TCP goes: it must complete, and its connections' SYNs arrive clamped to
// WireGuard's own MTU (MSS 1380: the device carries the containers' larger
// MTU, and TCP need not pay for fragments).
func checkBulk(t *testing.T, l *Lab, a, b *Host) {
	t.Helper()
	syns, err := l.CaptureOn(b.Container, "eth0", "tcp[tcpflags] & tcp-syn != 0 and tcp port 5201", "syn-"+b.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, decoded, err := syns.Stop(); err != nil || !strings.Contains(decoded, "mss 1380,") || strings.Contains(decoded, "mss 1410") {
			t.Errorf("the bulk transfer's SYNs, arriving in %s: %v\n%s\nwant every one with mss 1380", b.Container, err, decoded)
		}
	}()
	server := exec.Command("ip", "netns", "exec", b.Container, "iperf3", "-s", "-1", "-B", b.ContainerIP().String())
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var out string
	for range 20 { // until the server listens
		if out, err = Exec(a.Container, "iperf3", "-c", b.ContainerIP().String(), "-n", "32M", "--connect-timeout", "2000"); err == nil || !strings.Contains(out, "connect") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("bulk transfer from %s to %s: %v\n%s", a.Name, b.Name, err, out)
	}
}

// TestLiveSwitchSIGKILLMidway kills weftd on one host in the middle of a
// switch (its lease already names the new backend, the old one still runs)
// and starts it again: the restarted weftd continues the switch from its
// lease and state file, and the switch completes everywhere.
func TestLiveSwitchSIGKILLMidway(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.VXLAN})
	h1 := l.Hosts[0]
	offset := h1.LogOffset()
	if err := l.PutConfig(context.Background(), fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, backends.WireGuard)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h1.WaitLogLine(offset, 20*time.Second, "switching backend: published"); err != nil {
		t.Fatal(err)
	}
	l.StopWeftd(h1, syscall.SIGKILL)
	offset = h1.LogOffset()
	if err := l.StartWeftd(h1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h1.WaitLogLine(offset, 20*time.Second, "switching backend: keeping the previous one", "keeping=[vxlan]"); err != nil {
		t.Errorf("the restarted weftd did not continue the switch: %v\n%s", err, h1.LogTail(20))
	}
	waitSwitched(t, l, backends.WireGuard)
	eventually(t, "full ping matrix after the switch", 20*time.Second, func() error {
		if matrix, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("%s", matrix)
		}
		return nil
	})
	checkEncrypted(t, l, h1, l.Hosts[1])
	// After the switch, a restart keeps the MTU the containers started
	// with (vxlan's) on the WireGuard device, from the state file.
	l.StopWeftd(h1, syscall.SIGTERM)
	if err := l.StartWeftd(h1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.WaitReady(ctx, h1); err != nil {
		t.Fatal(err)
	}
	if out, err := Exec(h1.Name, "ip", "-o", "link", "show", "weft-wg"); err != nil || !strings.Contains(out, " mtu 1450 ") {
		t.Errorf("weft-wg after a restart: %v %s, want mtu 1450 (carried from vxlan)", err, out)
	}
	if out, err := Exec(h1.Container, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", l.Hosts[1].ContainerIP().String()); err != nil {
		t.Errorf("a 1450-byte packet with DF set after the restart: %v\n%s", err, out)
	}
}
