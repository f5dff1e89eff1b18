package lab

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/wireguard/wireguardtest"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// onDemandConfig is a wireguard network whose wireguard-go devices hold
// only the peers in use, idle after 3 s so the test sees removals.
// Subnets are /26 so the Network holds enough leases for the flood test.
const onDemandConfig = `{"Network":"10.5.0.0/16","SubnetLen":26,"Backend":{"Type":"wireguard","Implementation":"userspace","OnDemandPeers":"on","OnDemandIdleAfter":3}}`

// TestWireGuardOnDemand: with on-demand peers, devices hold only the
// peers in use. The first packet to an idle peer arrives (outbound
// activation on the sender, inbound on the receiver, from the handshake),
// idle peers leave the device and come back at once, a rotated key and a
// leaving host are followed for idle peers, and a flood towards hundreds
// of idle peers configures a bounded number at once, the rest counted.
func TestWireGuardOnDemand(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard, Config: onDemandConfig})
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	peerCount := func(h *Host) int {
		out, err := wgPeers(l, h)
		if err != nil {
			t.Fatal(err)
		}
		return len(strings.Fields(out))
	}
	waitIdle := func(h *Host) {
		t.Helper()
		eventually(t, h.Name+" removes its idle peers", 30*time.Second, func() error {
			if n := peerCount(h); n != 0 {
				return fmt.Errorf("%d peers still configured", n)
			}
			return nil
		})
	}

	t.Run("first packet to an idle peer arrives", func(t *testing.T) {
		for _, h := range l.Hosts {
			waitIdle(h)
		}
		// One ping, one try: the echo request starts on an idle h1 and
		// lands on an idle h3.
		if _, err := Exec(h1.Container, "ping", "-c", "1", "-W", "3", h3.ContainerIP().String()); err != nil {
			t.Fatalf("the first packet to an idle peer was lost: %v", err)
		}
		for _, pair := range [][2]*Host{{h1, h3}, {h3, h1}} {
			out, _ := wgPeers(l, pair[0])
			if !strings.Contains(out, publicKeyOf(t, pair[1])) || peerCount(pair[0]) != 1 {
				t.Errorf("%s holds %q, want only %s's key", pair[0].Name, out, pair[1].Name)
			}
		}
	})

	t.Run("status tells configured from idle peers", func(t *testing.T) {
		out, err := Exec(h1.Name, weftctlBin, "status")
		if err != nil || !strings.Contains(out, "wireguard peers on demand: 2 known") || !strings.Contains(out, "idle (configured on demand)") {
			t.Errorf("weftctl status: %v\n%s", err, out)
		}
		metrics, err := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
		if err != nil || !strings.Contains(metrics, `weft_wireguard_peers{state="idle"}`) || !strings.Contains(metrics, `weft_wireguard_on_demand_total{event="added"}`) {
			t.Errorf("metrics lack the on-demand series: %v", err)
		}
	})

	t.Run("a peer removed for idleness is back at once", func(t *testing.T) {
		waitIdle(h1)
		waitIdle(h3)
		for range 3 {
			if err := pingAddr(h3, h1.ContainerIP()); err != nil {
				t.Fatalf("h3 -> h1 after idle removal: %v", err)
			}
		}
	})

	t.Run("a rotated key is followed while idle", func(t *testing.T) {
		waitIdle(h1)
		if _, err := keys.Rotate(filepath.Join(h2.Dir, "wg.key")); err != nil {
			t.Fatal(err)
		}
		fresh := publicKeyOf(t, h2)
		eventually(t, "h1 learns h2's new key", 20*time.Second, func() error {
			records, _, err := l.Store().List(context.Background())
			for _, r := range records {
				if r.Key == lease.SubnetKey(h2.Subnet) && strings.Contains(string(r.Value), fresh) {
					return err
				}
			}
			return fmt.Errorf("lease not republished yet (%v)", err)
		})
		time.Sleep(time.Second) // h1 applies the lease change
		if _, err := Exec(h1.Container, "ping", "-c", "1", "-W", "3", h2.ContainerIP().String()); err != nil {
			t.Fatalf("first packet to h2 after its key rotated: %v", err)
		}
		if out, _ := wgPeers(l, h1); !strings.Contains(out, fresh) {
			t.Errorf("h1 holds %q, want h2's new key %s", out, fresh)
		}
	})

	t.Run("a TCP stream survives restarts of sender and receiver", func(t *testing.T) {
		// The restarted device holds no peer: the sender's next packet
		// configures the peer, the receiver's first data packet from
		// the sender (a session it no longer has) configures it and
		// starts a handshake at once.
		for i, restarted := range []*Host{h1, h2} {
			gap := restartGap(t, l, h1, h2, restarted, 5300+i)
			reliability(t, "restart gap with on-demand peers (weftd restarted on %s): %s", restarted.Name, gap.Round(time.Millisecond))
		}
	})

	t.Run("a flood towards idle peers is bounded", func(t *testing.T) {
		// 400 leases of hosts that do not exist, then one datagram from
		// h1's container to each of their subnets.
		ctx := context.Background()
		var fake []string
		for i, key := range freeSubnets(l, 400, 26) {
			value := fmt.Sprintf(`{"PublicIP":"192.168.50.%d","PublicIPv6":null,"BackendType":"wireguard"%s}`, 100+i%100, fakeBackendData(t, backends.WireGuard, i))
			if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
				t.Fatal(err)
			}
			fake = append(fake, key)
		}
		eventually(t, "h1 knows the 400 leases", 20*time.Second, func() error {
			out, _ := Exec(h1.Name, weftctlBin, "status")
			if !strings.Contains(out, "wireguard peers on demand: 402 known") {
				return fmt.Errorf("%s", strings.SplitN(out, "\n", 4)[2])
			}
			return nil
		})
		var dsts []netip.AddrPort
		for _, key := range fake {
			subnet, _ := lease.ParseSubnetKey(key)
			dsts = append(dsts, netip.AddrPortFrom(subnet.Addr().Next(), 9))
		}
		if err := SendUDPEach(h1.Container, dsts, []byte("x")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		n := peerCount(h1)
		metrics, _ := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
		capped := metricValue(metrics, `weft_wireguard_on_demand_total{event="capped"}`)
		t.Logf("400 datagrams to idle peers: %d configured, %d capped", n, capped)
		if n > 256+100*2 || capped == 0 {
			t.Errorf("%d peers configured, %d activations capped: want the rate bound (burst 256, 100/s) to hold", n, capped)
		}
		for _, key := range fake {
			l.Store().Delete(ctx, key)
		}
	})

	t.Run("datagrams forged from lease endpoints configure a bounded number, gone within seconds", func(t *testing.T) {
		checkForgedActivations(t, l, h1, h2, h3, peerCount)
	})

	t.Run("a leaving host goes from the table", func(t *testing.T) {
		l.StopWeftd(h3, 9)
		if err := l.Store().Delete(context.Background(), lease.SubnetKey(h3.Subnet)); err != nil {
			t.Fatal(err)
		}
		eventually(t, "h1 forgets h3", 20*time.Second, func() error {
			out, _ := Exec(h1.Name, weftctlBin, "status")
			if !strings.Contains(out, "wireguard peers on demand: 1 known") {
				return fmt.Errorf("%s", out)
			}
			return nil
		})
		if out, _ := wgPeers(l, h1); strings.Contains(out, publicKeyOf(t, h3)) {
			t.Errorf("h1 still holds h3's peer: %s", out)
		}
	})
}

// checkForgedActivations: issues 30 and 41. 300 leases of hosts that do
// not exist, each at its own endpoint, and a namespace on the underlay
// forging datagrams from those endpoints (anyone on the path can):
//   - one 4-byte WireGuard data message from each: h1 holds at most 128
//     of their peers (the rest are refused or capped, counted), the pair
//     h2-h3 keeps working, and the held peers leave h1's device within
//     seconds (no traffic of theirs comes out of the tunnel);
//   - initiations: random bytes from each endpoint and from h2's, and an
//     initiation made with h2's own key, replayed from h2's endpoint
//     after h1 saw it: none configures a peer, each is counted;
//   - data messages from h2's endpoint, h2 being live: h1 starts one
//     handshake, which h2 completes, and still removes h2 within seconds;
//   - data messages and random initiations at 100 a second each from the
//     dead endpoints: h3's first ping to an idle h1, and h1's to an idle
//     h3, arrive.
func checkForgedActivations(t *testing.T, l *Lab, h1, h2, h3 *Host, peerCount func(*Host) int) {
	ctx := context.Background()
	forger, _, err := l.AddUnderlayNetns("forger", 210)
	if err != nil {
		t.Fatal(err)
	}
	var fake []string
	var endpoints []netip.AddrPort
	for i, key := range freeSubnets(l, 300, 26) {
		ep := netip.AddrPortFrom(l.underlayAddr(100+i%100), uint16(40000+i))
		k, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":%d}}`, ep.Addr(), k.Public(), ep.Port())
		if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
			t.Fatal(err)
		}
		fake, endpoints = append(fake, key), append(endpoints, ep)
	}
	defer func() {
		for _, key := range fake {
			l.Store().Delete(ctx, key)
		}
	}()
	eventually(t, "h1 knows the 300 leases", 20*time.Second, func() error {
		out, _ := Exec(h1.Name, weftctlBin, "status")
		if !strings.Contains(out, "wireguard peers on demand: 302 known") {
			return fmt.Errorf("%s", strings.SplitN(out, "\n", 4)[2])
		}
		return nil
	})
	h1WG := netip.AddrPortFrom(h1.PublicIP, 51820)
	h2WG := netip.AddrPortFrom(h2.PublicIP, 51820)
	counter := func(event string) int {
		metrics, _ := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
		return metricValue(metrics, `weft_wireguard_on_demand_total{event="`+event+`"}`)
	}
	waitNone := func(what string, within time.Duration) {
		t.Helper()
		eventually(t, what, within, func() error {
			if n := peerCount(h1); n != 0 {
				return fmt.Errorf("%d peers configured on h1", n)
			}
			return nil
		})
	}
	waitNone("h1 idle before the forgeries", 30*time.Second)

	t.Run("data messages from 300 dead endpoints", func(t *testing.T) {
		if _, err := FloodForgedUDP(forger, h1WG, endpoints, [][]byte{{4, 0, 0, 0}}, 0, 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if _, err := Exec(h2.Container, "ping", "-c", "3", "-i", "0.2", "-W", "2", h3.ContainerIP().String()); err != nil {
			t.Errorf("the pair h2-h3 during the forged flood: %v", err)
		}
		n := peerCount(h1)
		refused, capped := counter("refused_unverified"), counter("capped")
		t.Logf("forged data messages: %d peers held, %d refused, %d capped", n, refused, capped)
		if n > 128+2 || n == 0 || refused+capped == 0 {
			t.Errorf("%d peers configured, %d refused, %d capped: want at most 128 held and the rest counted", n, refused, capped)
		}
		start := time.Now()
		waitNone("the held peers leave h1's device", 15*time.Second)
		t.Logf("held peers gone %s after the check", time.Since(start).Round(100*time.Millisecond))
	})

	t.Run("initiations without proof, and a replayed one, configure nothing", func(t *testing.T) {
		h2Key, err := keys.Load(filepath.Join(h2.Dir, "wg.key"))
		if err != nil {
			t.Fatal(err)
		}
		h1Key, err := keys.Load(filepath.Join(h1.Dir, "wg.key"))
		if err != nil {
			t.Fatal(err)
		}
		src, err := wireguardtest.NewInitiationSource(h2Key, h1Key.Public())
		if err != nil {
			t.Fatal(err)
		}
		defer src.Close()
		captured, err := src.Next()
		if err != nil {
			t.Fatal(err)
		}
		// h1 sees the capture once (fresh: it configures h2, whose
		// handshake cannot complete, so h2 leaves again)...
		if err := SendForgedUDP(forger, h2WG, h1WG, captured); err != nil {
			t.Fatal(err)
		}
		eventually(t, "h1 takes the fresh initiation", 5*time.Second, func() error {
			if peerCount(h1) != 1 {
				return fmt.Errorf("h2 not configured")
			}
			return nil
		})
		waitNone("h2 leaves h1 without a completed handshake", 15*time.Second)
		// ...then its replay and random initiations come.
		forged, replayed := counter("forged_initiation"), counter("replayed_initiation")
		random := make([][]byte, 50)
		for i := range random {
			random[i] = make([]byte, 148)
			rand.Read(random[i])
			random[i][0], random[i][1], random[i][2], random[i][3] = 1, 0, 0, 0
		}
		if _, err := FloodForgedUDP(forger, h1WG, append(endpoints[:50:50], h2WG), random, 0, 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := SendForgedUDP(forger, h2WG, h1WG, captured); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if n := peerCount(h1); n != 0 {
			t.Errorf("%d peers configured by random and replayed initiations", n)
		}
		if f, r := counter("forged_initiation")-forged, counter("replayed_initiation")-replayed; f < 50 || r != 1 {
			t.Errorf("counted %d initiations failing their proof (want at least 50) and %d replays (want 1)", f, r)
		}
	})

	t.Run("data messages from a live host's endpoint", func(t *testing.T) {
		if err := SendForgedUDP(forger, h2WG, h1WG, []byte{4, 0, 0, 0}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitNone("h1 removes h2, held by a forged data message", 10*time.Second)
		t.Logf("h2 held %s", time.Since(start).Round(100*time.Millisecond))
	})

	t.Run("a forged flood does not stop a real idle peer's first packet", func(t *testing.T) {
		eventually(t, "h3 idle", 30*time.Second, func() error {
			if n := peerCount(h3); n != 0 {
				return fmt.Errorf("%d peers configured on h3", n)
			}
			return nil
		})
		random := make([]byte, 148)
		rand.Read(random)
		random[0], random[1], random[2], random[3] = 1, 0, 0, 0
		flooded := make(chan error, 1)
		go func() {
			_, err := FloodForgedUDP(forger, h1WG, endpoints, [][]byte{{4, 0, 0, 0}, random}, 200, 8*time.Second)
			flooded <- err
		}()
		time.Sleep(3 * time.Second) // the flood has held what it can
		if _, err := Exec(h3.Container, "ping", "-c", "1", "-W", "3", h1.ContainerIP().String()); err != nil {
			t.Errorf("h3's first ping to an idle h1 during the flood: %v", err)
		}
		if _, err := Exec(h1.Container, "ping", "-c", "1", "-W", "3", h2.ContainerIP().String()); err != nil {
			t.Errorf("h1's first ping to an idle h2 during the flood: %v", err)
		}
		if err := <-flooded; err != nil {
			t.Fatal(err)
		}
	})
}

// freeSubnets are n lease keys of /bits subnets of the lab's Network that
// no host holds.
func freeSubnets(l *Lab, n, bits int) []string {
	var out []string
	for s := netip.PrefixFrom(netip.MustParseAddr("10.5.64.0"), bits); len(out) < n; s = netip.PrefixFrom(nextSubnet(s), bits) {
		taken := false
		for _, h := range l.Hosts {
			taken = taken || h.Subnet.Overlaps(s)
		}
		if !taken {
			out = append(out, lease.SubnetKey(s))
		}
	}
	return out
}

// nextSubnet is the address right after s.
func nextSubnet(s netip.Prefix) netip.Addr {
	a := s.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += 1 << (32 - s.Bits())
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// metricValue is the value of one series in a /metrics text, 0 when absent.
func metricValue(metrics, series string) int {
	for _, line := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}
