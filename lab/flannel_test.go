package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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
	l := startCluster(t, Options{Hosts: 2, Backend: lease.BackendUDP})
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
		if want := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null}`, h1.PublicIP); err != nil || !ok || string(rec.Value) != want {
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

// TestFlannelWireGuardHost runs a wireguard cluster with one host whose
// lease is written exactly as flanneld's wireguard backend writes it
// ("BackendData":{"PublicKey":..,"Port":51820}), and whose data path is a
// wireguard-go device configured by hand with `wg`, as flanneld configures
// its own. Pings must pass both ways.
func TestFlannelWireGuardHost(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: lease.BackendWireGuard})
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
	proc, err := StartWireGuardGo(wireguardGoBin, f.Name, dev)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		proc.Process.Kill()
		proc.Wait()
		os.Remove("/var/run/wireguard/" + dev + ".sock")
	})
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

	for _, h := range l.Hosts {
		eventually(t, "weft container "+h.Name+" pings the flannel host", 15*time.Second, func() error {
			_, err := Exec(h.Container, "ping", "-c", "1", "-W", "1", "-q", flannelAddr.String())
			return err
		})
		eventually(t, "the flannel host pings weft container "+h.Name, 15*time.Second, func() error {
			_, err := Exec(f.Name, "ping", "-c", "1", "-W", "1", "-q", "-I", flannelAddr.String(), h.ContainerIP().String())
			return err
		})
	}
	checkNotSkipped(t, l.Hosts, f)
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
		{lease.BackendVXLAN, "weft.1", 1400},
		{lease.BackendWireGuard, "weft-wg", 1370},
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
