package lab

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// flannelHost is a namespace on the underlay standing in for a host that
// runs flanneld: its lease is written byte for byte as flanneld writes it
// (shared/flannel), and the test speaks the backend's wire format for it.
type flannelHost struct {
	Name     string
	PublicIP netip.Addr
	Subnet   netip.Prefix
}

// addFlannelHost makes the namespace at underlay address .n and picks a
// subnet no lab host holds; the caller publishes the lease.
func addFlannelHost(t *testing.T, l *Lab, n int) *flannelHost {
	t.Helper()
	name, addr, err := l.AddUnderlayNetns(fmt.Sprintf("fl%d", n), n)
	if err != nil {
		t.Fatal(err)
	}
	taken := map[netip.Prefix]bool{}
	for _, h := range l.Hosts {
		taken[h.Subnet] = true
	}
	subnet := netip.MustParsePrefix("10.5.250.0/24")
	for taken[subnet] {
		subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, subnet.Addr().As4()[2] + 1, 0}), 24)
	}
	return &flannelHost{Name: name, PublicIP: addr, Subnet: subnet}
}

// publish writes value as the flannel host's lease, as flanneld does.
func (f *flannelHost) publish(t *testing.T, l *Lab, value string) {
	t.Helper()
	if _, err := l.Store().Create(context.Background(), lease.SubnetKey(f.Subnet), []byte(value), time.Hour); err != nil {
		t.Fatal(err)
	}
}

// checkPings checks that every weft host's container and the flannel host
// (from addr, its address on its flannel device) ping each other, and that
// no weft host skipped the flannel host's lease.
func (f *flannelHost) checkPings(t *testing.T, l *Lab, addr netip.Addr) {
	t.Helper()
	for _, h := range l.Hosts {
		eventually(t, "weft container "+h.Name+" pings the flannel host", 15*time.Second, func() error {
			_, err := Exec(h.Container, "ping", "-c", "1", "-W", "1", "-q", addr.String())
			return err
		})
		eventually(t, "the flannel host pings weft container "+h.Name, 15*time.Second, func() error {
			_, err := Exec(f.Name, "ping", "-c", "1", "-W", "1", "-q", "-I", addr.String(), h.ContainerIP().String())
			return err
		})
	}
	checkNotSkipped(t, l.Hosts, f)
}

// checkNotSkipped fails when a weft host's log skipped the flannel lease.
func checkNotSkipped(t *testing.T, hosts []*Host, f *flannelHost) {
	t.Helper()
	for _, h := range hosts {
		log, _ := os.ReadFile(h.LogPath())
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "skipping lease") && strings.Contains(line, lease.SubnetKey(f.Subnet)) {
				t.Errorf("%s skipped the flannel host's lease: %s", h.Name, line)
			}
		}
	}
}

// TestFlannelUDPHost runs a udp cluster with one host whose lease is
// written exactly as flanneld's udp backend writes it (no BackendType, no
// BackendData), and whose data path is a plain UDP socket on port 8285
// speaking flannel's wire format (an IP packet as the datagram's payload).
// Traffic must pass both ways between it and a weft host's container.
func TestFlannelUDPHost(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.UDP})
	h1 := l.Hosts[0]
	f := addFlannelHost(t, l, 201)
	f.publish(t, l, fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null}`, f.PublicIP))

	var sock *net.UDPConn
	if err := inNetns(f.Name, func() (err error) {
		sock, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.PublicIP, 8285)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	flannelContainer := f.Subnet.Addr().Next().Next()
	weftPort := netip.AddrPortFrom(h1.PublicIP, 8285)
	target := netip.AddrPortFrom(h1.ContainerIP(), 7777)

	t.Run("weft's own udp lease is flannel's form", func(t *testing.T) {
		rec, ok, err := l.Store().Get(context.Background(), lease.SubnetKey(h1.Subnet))
		if want := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null}`, h1.PublicIP); err != nil || !ok || flannelFields(t, h1, rec.Value) != want {
			t.Errorf("h1's lease is %s (%v), flannel's udp writes %s", rec.Value, err, want)
		}
	})

	t.Run("flannel host to weft container", func(t *testing.T) {
		eventually(t, "a datagram from the flannel host's container arrives", 15*time.Second, func() error {
			got, err := ReceiveUDP(h1.Container, target, 300*time.Millisecond, func() {
				inner := InnerUDP(netip.AddrPortFrom(flannelContainer, 5555), target, []byte("from-flannel"))
				if _, err := sock.WriteToUDPAddrPort(inner, weftPort); err != nil {
					t.Error(err)
				}
			})
			if err != nil {
				return err
			}
			if len(got) != 1 || !strings.HasPrefix(got[0], "from-flannel from "+flannelContainer.String()+":5555") {
				return fmt.Errorf("received %q", got)
			}
			return nil
		})
	})

	t.Run("weft container to flannel host", func(t *testing.T) {
		buf := make([]byte, 2048)
		eventually(t, "a packet for the flannel host's container reaches its port 8285", 15*time.Second, func() error {
			if err := SendUDP(h1.Container, netip.AddrPortFrom(flannelContainer, 7777), []byte("to-flannel")); err != nil {
				return err
			}
			sock.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, from, err := sock.ReadFromUDPAddrPort(buf)
			if err != nil {
				return err
			}
			pkt := buf[:n]
			if from != weftPort {
				return fmt.Errorf("datagram from %s, want weftd's %s", from, weftPort)
			}
			if n < 28 || pkt[0] != 0x45 || pkt[9] != 17 {
				return fmt.Errorf("payload is not an IPv4 UDP packet: % x", pkt)
			}
			src, dst := netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20]))
			if src != h1.ContainerIP() || dst != flannelContainer || binary.BigEndian.Uint16(pkt[22:24]) != 7777 || string(pkt[28:]) != "to-flannel" {
				return fmt.Errorf("inner packet %s -> %s port %d %q", src, dst, binary.BigEndian.Uint16(pkt[22:24]), pkt[28:])
			}
			return nil
		})
	})
	checkNotSkipped(t, l.Hosts, f)
}

// startWireGuardGo runs wireguard-go for device dev in namespace ns until
// the test ends.
func startWireGuardGo(t *testing.T, ns, dev string) {
	t.Helper()
	proc, err := StartWireGuardGo(wireguardGoBin, ns, dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc.Process.Kill()
		proc.Wait()
		os.Remove("/var/run/wireguard/" + dev + ".sock")
	})
}

// TestFlannelWireGuardHost runs a wireguard cluster with one host whose
// lease is written exactly as flanneld's wireguard backend writes it
// ("BackendData":{"PublicKey":..,"Port":51820}), and whose data path is a
// wireguard-go device configured by hand with `wg`, as flanneld configures
// its own. Pings must pass both ways.
func TestFlannelWireGuardHost(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.WireGuard})
	f := addFlannelHost(t, l, 202)
	key, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(l.Dir, "flannel-wg.key")
	if err := os.WriteFile(keyFile, []byte(key.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := "wf" + l.ID
	startWireGuardGo(t, f.Name, dev)
	flannelAddr := f.Subnet.Addr().Next() // flanneld puts its subnet's first address on flannel-wg
	set := []string{"ip", "netns", "exec", f.Name, "wg", "set", dev, "private-key", keyFile, "listen-port", "51820"}
	for _, h := range l.Hosts {
		set = append(set, "peer", publicKeyOf(t, h), "endpoint", netip.AddrPortFrom(h.PublicIP, 51820).String(), "allowed-ips", h.Subnet.String())
	}
	if err := RunAll(set,
		[]string{"ip", "-n", f.Name, "addr", "add", netip.PrefixFrom(flannelAddr, 32).String(), "dev", dev},
		[]string{"ip", "-n", f.Name, "link", "set", dev, "up"},
		[]string{"ip", "-n", f.Name, "route", "add", DefaultNetwork, "dev", dev},
	); err != nil {
		t.Fatal(err)
	}
	f.publish(t, l, fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820}}`,
		f.PublicIP, key.Public()))

	f.checkPings(t, l, flannelAddr)
}

// TestFlannelMTU: with "MTU":1450 in the config, the device and
// FLANNEL_MTU are 1450 less the overhead, as on flannel's hosts of the
// same cluster, and packets of exactly that size cross between hosts with
// fragmentation forbidden.
func TestFlannelMTU(t *testing.T) {
	for _, tt := range []struct {
		backend, device string
		want            int
	}{
		{backends.VXLAN, "weft.1", 1400},
		{backends.WireGuard, "weft-wg", 1370},
	} {
		t.Run(tt.backend, func(t *testing.T) {
			config := fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q,"MTU":1450}}`, DefaultNetwork, tt.backend)
			l := startCluster(t, Options{Hosts: 2, Config: config})
			h1, h2 := l.Hosts[0], l.Hosts[1]
			env, err := lease.ReadSubnetFile(h1.SubnetFile())
			if err != nil || env.MTU != tt.want {
				t.Errorf("FLANNEL_MTU %d (%v), flannel writes %d", env.MTU, err, tt.want)
			}
			if out, _ := Exec(h1.Name, "ip", "link", "show", tt.device); !strings.Contains(out, fmt.Sprintf("mtu %d ", tt.want)) {
				t.Errorf("device: %s, want mtu %d", out, tt.want)
			}
			size := strconv.Itoa(tt.want - 28) // ICMP payload of a tt.want-byte IP packet
			if _, err := Exec(h1.Container, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", size, h2.ContainerIP().String()); err != nil {
				t.Errorf("a %d-byte packet with DF set: %v", tt.want, err)
			}
		})
	}
}

// vtepMAC reads a vxlan host's VTEP MAC from its lease.
func vtepMAC(t *testing.T, l *Lab, subnet netip.Prefix) string {
	t.Helper()
	rec, ok, err := l.Store().Get(context.Background(), lease.SubnetKey(subnet))
	if err != nil || !ok {
		t.Fatalf("lease %s: %v", subnet, err)
	}
	var v struct{ BackendData struct{ VtepMAC string } }
	if err := json.Unmarshal(rec.Value, &v); err != nil {
		t.Fatal(err)
	}
	return v.BackendData.VtepMAC
}

// TestMoveFromFlannelInPlace moves a host from flannel to weft without a
// reboot: the host runs on the state flanneld (vxlan) leaves behind (its
// lease, subnet file, flannel.1 with routes, neighbours and FDB entries to
// the weft hosts, its iptables chains) and its container talks to the weft
// hosts. weftd started there names flannel.1 and the command that removes
// it; after `weftctl cleanup --flannel`, weftd keeps the host's subnet and
// traffic resumes.
func TestMoveFromFlannelInPlace(t *testing.T) {
	ctx := context.Background()
	l := newLab(t, Options{Hosts: 3, Backend: backends.VXLAN, WeftdHosts: 2})
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	// What flanneld leaves on h3, as it names and builds it.
	subnet := netip.MustParsePrefix("10.5.250.0/24")
	for subnet == h1.Subnet || subnet == h2.Subnet {
		subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, subnet.Addr().As4()[2] + 1, 0}), 24)
	}
	h3.Subnet = subnet
	mac := "5e:fd:b7:a1:37:a7"
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, h3.PublicIP, mac)
	if _, err := l.Store().Create(ctx, lease.SubnetKey(subnet), []byte(value), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := lease.WriteSubnetFile(h3.SubnetFile(), lease.SubnetEnv{Network: netip.MustParsePrefix(DefaultNetwork), Subnet: subnet, MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	ns := h3.Name
	cmds := [][]string{
		{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"}, // docker's doing, on a flannel host
		{"ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", h3.PublicIP.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
		{"ip", "-n", ns, "link", "set", "flannel.1", "mtu", "1450", "address", mac, "up"},
		{"ip", "-n", ns, "addr", "add", subnet.Addr().String() + "/32", "dev", "flannel.1"},
		{"ip", "netns", "exec", ns, "iptables", "-t", "nat", "-N", "FLANNEL-POSTRTG"},
		{"ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"},
		{"ip", "netns", "exec", ns, "iptables", "-N", "FLANNEL-FWD"},
		{"ip", "netns", "exec", ns, "iptables", "-A", "FLANNEL-FWD", "-s", DefaultNetwork, "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT"},
		{"ip", "netns", "exec", ns, "iptables", "-A", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD"},
		// What flanneld's nftables mode leaves, from an earlier run with it.
		{"ip", "netns", "exec", ns, "nft", "add", "table", "ip", "flannel-ipv4"},
		{"ip", "netns", "exec", ns, "nft", "add", "table", "ip6", "flannel-ipv6"},
	}
	for _, h := range []*Host{h1, h2} {
		peerMAC, vtep := vtepMAC(t, l, h.Subnet), h.Subnet.Addr().String()
		cmds = append(cmds,
			[]string{"ip", "-n", ns, "neigh", "add", vtep, "lladdr", peerMAC, "dev", "flannel.1", "nud", "permanent"},
			[]string{"ip", "netns", "exec", ns, "bridge", "fdb", "add", peerMAC, "dev", "flannel.1", "dst", h.PublicIP.String(), "self", "permanent"},
			[]string{"ip", "-n", ns, "route", "add", h.Subnet.String(), "via", vtep, "dev", "flannel.1", "onlink"})
	}
	if err := RunAll(cmds...); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h3); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the flannel host's container reaches the weft hosts' (mixed cluster)", 15*time.Second, func() error {
		return errors.Join(l.Ping(h1, h3), l.Ping(h3, h1), l.Ping(h3, h2))
	})

	// flanneld stops (nothing of it runs here); weftd starts in its place.
	offset := h3.LogOffset()
	if err := l.StartWeftd(h3); err != nil {
		t.Fatal(err)
	}
	if _, line, err := h3.WaitLogLine(offset, 20*time.Second, "flannel.1", "weftctl cleanup --flannel"); err != nil {
		t.Fatalf("weftd did not name flannel's device and the fix: %v\n%s", err, h3.LogTail(20))
	} else {
		t.Logf("weftd: %s", line)
	}
	l.StopWeftd(h3, syscall.SIGTERM)
	start := time.Now()
	out, err := Exec(ns, weftctlBin, "cleanup", "-flannel", "-subnet-file", h3.SubnetFile())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"removed flannel's device flannel.1", "FLANNEL-POSTRTG", "FLANNEL-FWD",
		"removed flannel's nftables table flannel-ipv4", "removed flannel's nftables table flannel-ipv6"} {
		if !strings.Contains(out, want) {
			t.Errorf("cleanup -flannel output lacks %q:\n%s", want, out)
		}
	}
	if err := l.StartWeftd(h3); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h3); err != nil {
		t.Fatal(err)
	}
	if h3.Subnet != subnet {
		t.Errorf("weftd took %s; the host had %s under flannel", h3.Subnet, subnet)
	}
	eventually(t, "traffic between the moved host and the others resumes", 20*time.Second, func() error {
		return errors.Join(l.Ping(h1, h3), l.Ping(h3, h1), l.Ping(h3, h2))
	})
	reliability(t, "moving a vxlan host from flannel to weft in place: traffic resumed %s after `weftctl cleanup --flannel`", time.Since(start).Round(10*time.Millisecond))
	if out, _ := Exec(ns, "iptables-save"); strings.Contains(out, "FLANNEL") {
		t.Errorf("flannel's chains remain:\n%s", out)
	}
}
