package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

func publicKeyOf(t *testing.T, h *Host) string {
	t.Helper()
	k, err := keys.Load(filepath.Join(h.Dir, "wg.key"))
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

// wgPeers lists the peer keys `wg show` reports on h.
func wgPeers(l *Lab, h *Host) (string, error) {
	return l.HostExec(h, "wg", "show", "weft-wg", "peers")
}

// checkEncrypted pings from's container from to's with a known payload
// while capturing the underlay: the payload must not cross in clear, and
// every packet between the hosts must be WireGuard (etcd's client traffic
// on port 2379 is control, not a container's).
func checkEncrypted(t *testing.T, l *Lab, from, to *Host) {
	t.Helper()
	checkEncryptedTo(t, l, from, to.ContainerIP(), 51820)
}

// checkEncryptedTo is checkEncrypted for any container address dst, whose
// WireGuard traffic must use port; it returns tcpdump's lines of the
// WireGuard packets on port. Packets on weft's other WireGuard port (the
// other family's device) are WireGuard too, but not returned or counted.
func checkEncryptedTo(t *testing.T, l *Lab, from *Host, dst netip.Addr, port int) []string {
	t.Helper()
	pattern := "deadbeefcafef00d0123456789abcdef"
	capture, err := l.CaptureUnderlay("wg")
	if err != nil {
		t.Fatal(err)
	}
	_, perr := Exec(from.Container, "ping", "-c", "3", "-i", "0.2", "-p", pattern, dst.String())
	raw, decoded, err := capture.Stop()
	if perr != nil || err != nil {
		t.Fatalf("ping %v, capture %v", perr, err)
	}
	needle, _ := hex.DecodeString(pattern)
	if bytes.Contains(raw, needle) {
		t.Fatalf("a container's ping crossed the underlay in clear:\n%s", decoded)
	}
	var wgPackets []string
	for _, line := range strings.Split(strings.TrimSpace(decoded), "\n") {
		switch {
		case strings.Contains(line, fmt.Sprintf(".%d: UDP", port)):
			wgPackets = append(wgPackets, line)
		case strings.Contains(line, ".51820: UDP"), strings.Contains(line, ".51821: UDP"):
			// The other family's device between any two hosts: a
			// handshake retried 5 s after one the peer dropped
			// because it did not know the sender yet (CI saw one).
		case strings.Contains(line, ".2379"):
		default:
			t.Errorf("a packet other than WireGuard on the underlay: %s", line)
		}
	}
	if len(wgPackets) < 6 {
		t.Errorf("only %d WireGuard packets for 3 pings:\n%s", len(wgPackets), decoded)
	}
	return wgPackets
}

// restartWeftd stops weftd on h with SIGTERM, starts it again and waits
// until it is ready.
func restartWeftd(t *testing.T, l *Lab, h *Host) {
	t.Helper()
	l.StopWeftd(h, syscall.SIGTERM)
	if err := l.StartWeftd(h); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(context.Background(), h); err != nil {
		t.Fatal(err)
	}
}

// checkStream lets a stream run, calls disrupt, lets it run on, and checks
// every byte arrived intact; it reports the longest gap.
func checkStream(t *testing.T, l *Lab, from, to *Host, port int, what string, disrupt func()) {
	t.Helper()
	s, err := l.StartStream(from, to, port)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	disrupt()
	before := s.Received()
	eventually(t, "stream flows again after "+what, 60*time.Second, func() error {
		if s.Received() < before+256<<10 {
			return fmt.Errorf("%d bytes since", s.Received()-before)
		}
		return nil
	})
	res, err := s.Stop()
	if err != nil {
		t.Fatalf("stream across %s: %v", what, err)
	}
	reliability(t, "TCP stream across %s: %d bytes intact, 0 lost, longest gap %s", what, res.Received, res.MaxGap.Round(time.Millisecond))
}

// kernelWireGuard says whether this kernel makes WireGuard links (the VM
// tier's Debian kernel does, the lab machines' own kernel does not); the
// wireguard tests then expect weftd to pick the kernel device.
var kernelWireGuard bool

// checkImplementation checks h's weftd logged the WireGuard it uses and
// why, and that weft-wg is that kind of device (wireguard or tun).
func checkImplementation(t *testing.T, h *Host, kernel bool, why string) {
	t.Helper()
	msg, kind := `msg="using wireguard-go in weftd"`, "tun"
	if kernel {
		msg, kind = `msg="using kernel WireGuard"`, "wireguard"
	}
	found := false
	for _, line := range strings.Split(h.LogTail(10000), "\n") {
		found = found || strings.Contains(line, msg) && strings.Contains(line, why)
	}
	if !found {
		t.Errorf("%s: weftd did not log %s with %s:\n%s", h.Name, msg, why, h.LogTail(30))
	}
	if out, err := Exec(h.Name, "ip", "-d", "link", "show", "weft-wg"); err != nil || !strings.Contains(out, "\n    "+kind+" ") {
		t.Errorf("%s: weft-wg is not a %s device (%v):\n%s", h.Name, kind, err, out)
	}
}

// linkIndex is the ifindex of weft-wg on h (0 when it is missing).
func linkIndex(h *Host) string {
	out, _ := Exec(h.Name, "cat", "/sys/class/net/weft-wg/ifindex")
	return strings.TrimSpace(out)
}

// restartKeepingDevice restarts weftd on h and checks the device outlived
// it; a kernel device also keeps its peers while weftd is down.
func restartKeepingDevice(t *testing.T, l *Lab, h *Host) {
	t.Helper()
	index, peers := linkIndex(h), ""
	if out, err := wgPeers(l, h); err == nil {
		peers = out
	}
	l.StopWeftd(h, syscall.SIGTERM)
	if kernelWireGuard {
		// No weftd, so no mount namespace of its to enter: the kernel
		// device answers netlink in the host's network namespace.
		if out, err := Exec(h.Name, "wg", "show", "weft-wg", "peers"); err != nil || out != peers || peers == "" {
			t.Errorf("%s: with weftd stopped the kernel device lists peers %q (%v), had %q", h.Name, out, err, peers)
		}
	}
	if err := l.StartWeftd(h); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if after := linkIndex(h); after != index || index == "" {
		t.Errorf("%s: weft-wg was remade by the restart (ifindex %s, now %s)", h.Name, index, after)
	}
}

func TestWireGuardCluster(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard})
	ctx := context.Background()
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	if kernelWireGuard {
		checkImplementation(t, h1, true, `why="the kernel supports WireGuard links"`)
	} else {
		checkImplementation(t, h1, false, `why="this kernel has no WireGuard support`)
	}

	t.Run("hostile leases reach no kernel", func(t *testing.T) { checkHostileLeases(t, l, backends.WireGuard) })

	t.Run("underlay carries only encrypted UDP", func(t *testing.T) { checkEncrypted(t, l, h1, h2) })

	t.Run("wg show lists peers with handshakes", func(t *testing.T) {
		out, err := l.HostExec(h1, "wg", "show", "weft-wg", "latest-handshakes")
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 2 {
			t.Fatalf("wg show lists %d peers, want 2:\n%s", len(lines), out)
		}
		for _, line := range lines {
			if f := strings.Fields(line); len(f) != 2 || f[1] == "0" {
				t.Errorf("peer without a handshake: %q", line)
			}
		}
		for _, h := range []*Host{h2, h3} {
			if !strings.Contains(out, publicKeyOf(t, h)) {
				t.Errorf("h1 lacks %s's key", h.Name)
			}
		}
	})

	t.Run("TCP stream survives restarts of sender and receiver", func(t *testing.T) {
		key, subnet := publicKeyOf(t, h1), h1.Subnet
		checkStream(t, l, h1, h2, 5001, "a restart of weftd on the sending host", func() { restartKeepingDevice(t, l, h1) })
		if publicKeyOf(t, h1) != key || h1.Subnet != subnet {
			t.Fatal("h1 came back with another key or subnet")
		}
		checkStream(t, l, h1, h2, 5002, "a restart of weftd on the receiving host", func() { restartKeepingDevice(t, l, h2) })
	})

	t.Run("peer added by hand is removed at resync", func(t *testing.T) {
		stale := newPublicKey(t)
		if _, err := l.HostExec(h1, "wg", "set", "weft-wg", "peer", stale, "allowed-ips", "10.5.251.0/24", "endpoint", "192.168.50.99:51820"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the stale peer removed", 10*time.Second, func() error {
			if out, err := wgPeers(l, h1); err != nil || strings.Contains(out, stale) {
				return fmt.Errorf("peers %q (%v)", out, err)
			}
			return nil
		})
		eventually(t, "h1 -> h2 after the resync", 10*time.Second, func() error { return l.Ping(h1, h2) })
	})

	t.Run("key rotation is followed by every peer", func(t *testing.T) {
		for _, rotate := range []struct {
			how string
			do  func() error
		}{
			{"SIGHUP", func() error { return syscall.Kill(l.WeftdPID(h1), syscall.SIGHUP) }},
			{"key file rewritten (weftctl keys rotate)", func() error {
				_, err := keys.Rotate(filepath.Join(h1.Dir, "wg.key"))
				return err
			}},
		} {
			old := publicKeyOf(t, h1)
			start := time.Now()
			if err := rotate.do(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "new key in the file", 10*time.Second, func() error {
				if publicKeyOf(t, h1) == old {
					return fmt.Errorf("unchanged")
				}
				return nil
			})
			fresh := publicKeyOf(t, h1)
			for _, h := range []*Host{h2, h3} {
				eventually(t, h.Name+" follows the new key", 20*time.Second, func() error {
					out, err := wgPeers(l, h)
					if err != nil || !strings.Contains(out, fresh) || strings.Contains(out, old) {
						return fmt.Errorf("peers %q (%v)", out, err)
					}
					return nil
				})
			}
			eventually(t, "traffic after rotation", 30*time.Second, func() error { return l.Ping(h2, h1) })
			reliability(t, "WireGuard key rotation by %s: traffic back after %s", rotate.how, time.Since(start).Round(time.Millisecond))
		}
	})

	t.Run("private keys never leave their host", func(t *testing.T) {
		var private []string
		for _, h := range l.Hosts {
			raw, err := os.ReadFile(filepath.Join(h.Dir, "wg.key"))
			if err != nil {
				t.Fatal(err)
			}
			private = append(private, strings.TrimSpace(string(raw)))
		}
		var seen strings.Builder
		records, _, err := l.Store().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range records {
			seen.Write(r.Value)
		}
		for _, h := range l.Hosts {
			log, _ := os.ReadFile(h.LogPath())
			seen.Write(log)
		}
		for _, args := range [][]string{{"status", "-o", "json"}, {"status"}, {"-etcd-endpoints", l.EtcdEndpoint(), "leases"}, {"-etcd-endpoints", l.EtcdEndpoint(), "leases", "-o", "json"}} {
			out, err := Exec(h1.Name, append([]string{weftctlBin}, args...)...)
			if err != nil {
				t.Fatal(err)
			}
			seen.WriteString(out)
		}
		metrics, _ := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
		seen.WriteString(metrics)
		for i, k := range private {
			if strings.Contains(seen.String(), k) {
				t.Errorf("the private key of h%d appears in etcd, a log, weftctl output or /metrics", i+1)
			}
		}
	})

	t.Run("host that leaves disappears from peers", func(t *testing.T) {
		gone := publicKeyOf(t, h3)
		l.StopWeftd(h3, syscall.SIGTERM)
		if err := l.Store().Delete(ctx, lease.SubnetKey(h3.Subnet)); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*Host{h1, h2} {
			eventually(t, "h3 gone from "+h.Name, 10*time.Second, func() error {
				if out, err := wgPeers(l, h); err != nil || strings.Contains(out, gone) {
					return fmt.Errorf("peers %q (%v)", out, err)
				}
				return nil
			})
		}
		if err := l.Ping(h1, h2); err != nil {
			t.Errorf("h1 -> h2 after h3 left: %v", err)
		}
	})

	t.Run("weftctl cleanup removes the device", func(t *testing.T) {
		l.StopWeftd(h2, syscall.SIGTERM)
		if linkIndex(h2) == "" {
			t.Fatal("SIGTERM removed weft-wg; it should stay for the next start")
		}
		if out, err := Exec(h2.Name, weftctlBin, "cleanup", "-subnet-file", h2.SubnetFile()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := Exec(h2.Name, "ip", "link", "show", "weft-wg"); err == nil {
			t.Errorf("weft-wg left after weftctl cleanup:\n%s", out)
		}
	})

	t.Run("-cleanup-on-exit removes the device", func(t *testing.T) {
		l.StopWeftd(h1, syscall.SIGTERM)
		if err := l.StartWeftd(h1, "-cleanup-on-exit"); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(ctx, h1); err != nil {
			t.Fatal(err)
		}
		l.StopWeftd(h1, syscall.SIGTERM)
		if out, err := Exec(h1.Name, "ip", "link", "show", "weft-wg"); err == nil {
			t.Errorf("weft-wg left after -cleanup-on-exit:\n%s", out)
		}
	})
}

// TestWireGuardMixedMesh runs kernel WireGuard on two hosts and wireguard-go
// on a third (a host whose kernel lacks the module; here chosen with
// -wireguard-implementation): every pair passes traffic both ways, and only
// WireGuard crosses the underlay. It needs a kernel with WireGuard: the VM
// tier (make vmtest) runs it.
func TestWireGuardMixedMesh(t *testing.T) {
	if !kernelWireGuard {
		t.Skip("this kernel has no WireGuard; the VM tier (make vmtest) runs this test on Debian's kernel")
	}
	l := newLab(t, Options{Hosts: 3, Backend: backends.WireGuard, WeftdHosts: 2})
	ctx := context.Background()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	if err := l.StartWeftd(h3, "-wireguard-implementation", "userspace"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h3); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h3); err != nil {
		t.Fatal(err)
	}
	checkImplementation(t, h1, true, `why="the kernel supports WireGuard links"`)
	checkImplementation(t, h2, true, `why="the kernel supports WireGuard links"`)
	checkImplementation(t, h3, false, `why="-wireguard-implementation is \"userspace\""`)
	eventually(t, "full ping matrix across kernel and wireguard-go hosts", 20*time.Second, func() error {
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	checkEncrypted(t, l, h1, h3)
	checkEncrypted(t, l, h3, h2)
}

// TestWireGuardBadOptions: each bad option gets one clear error naming it.
func TestWireGuardBadOptions(t *testing.T) {
	l := newLab(t, Options{Hosts: 2})
	ctx := context.Background()
	h := l.Hosts[0]
	for _, c := range []struct{ name, backend, want string }{
		{"unparsable PSK", `{"Type":"wireguard","PSK":"hunter2"}`, `key \"Backend.PSK\"`},
		{"short PSK", `{"Type":"wireguard","PSK":"AAAA"}`, `key \"Backend.PSK\": decodes to 3 bytes`},
		{"ListenPort out of range", `{"Type":"wireguard","ListenPort":99999}`, `key \"Backend.ListenPort\": 99999 is not a UDP port`},
	} {
		t.Run(c.name, func(t *testing.T) {
			startWithConfig(t, l, h, `{"Network":"10.5.0.0/16","Backend":`+c.backend+`}`, c.want)
			if _, err := Exec(h.Name, "ip", "link", "show", "weft-wg"); err == nil {
				t.Error("device created despite the bad option")
			}
		})
	}
	t.Run("kernel implementation without kernel support", func(t *testing.T) {
		if err := l.PutConfig(ctx, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Implementation":"kernel"}}`); err != nil {
			t.Fatal(err)
		}
		if kernelWireGuard {
			t.Skip("this kernel has WireGuard")
		}
		os.Truncate(h.LogPath(), 0)
		if err := l.StartWeftd(h); err != nil {
			t.Fatal(err)
		}
		h.mu.Lock()
		exited := h.exited
		h.mu.Unlock()
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			l.StopWeftd(h, syscall.SIGKILL)
			t.Fatal("weftd kept running with Implementation kernel and no kernel WireGuard")
		}
		want := `key \"Backend.Implementation\": \"kernel\", but this kernel has no WireGuard support`
		if log, _ := os.ReadFile(h.LogPath()); !strings.Contains(string(log), want) {
			t.Errorf("log lacks %s:\n%s", want, log)
		}
	})
}
