package lab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// kernelIPIP says whether this kernel makes ipip links: this machine's
// does not, Debian's in the VM tier does.
var kernelIPIP bool

// TestIPIPCluster: flannel's ipip backend on a real kernel: three hosts
// reach each other through weft.ipip (MTU 1480, the subnet's network
// address /32), the underlay carries IPv4-in-IPv4 between the hosts'
// addresses, leases are flannel's ("BackendType":"ipip", no BackendData),
// a restart keeps the device and a TCP stream, and a host that leaves
// loses its route. Only the VM tier's kernel has ipip.
func TestIPIPCluster(t *testing.T) {
	if !kernelIPIP {
		t.Skip("this kernel has no ipip; the VM tier (make vmtest) runs this test on Debian's kernel")
	}
	l := startCluster(t, Options{Hosts: 3, Backend: backends.IPIP})
	ctx := context.Background()
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	checkLeaseValues(t, l, func(h *Host) string {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"ipip"}`, h.PublicIP)
	})
	for _, h := range l.Hosts {
		link, _ := Exec(h.Name, "ip", "-d", "-o", "link", "show", "dev", "weft.ipip")
		addr, _ := Exec(h.Name, "ip", "-o", "-4", "addr", "show", "dev", "weft.ipip")
		if dev := link + addr; !strings.Contains(dev, "mtu 1480") || !strings.Contains(dev, "remote any local "+h.PublicIP.String()) ||
			!strings.Contains(dev, "inet "+h.Subnet.Addr().String()+"/32") {
			t.Errorf("%s: weft.ipip is\n%s%s", h.Name, link, addr)
		}
		if env, err := lease.ReadSubnetFile(h.SubnetFile()); err != nil || env.MTU != 1480 {
			t.Errorf("%s: subnet file MTU %d (%v), want 1480", h.Name, env.MTU, err)
		}
	}

	t.Run("underlay carries IPv4 in IPv4 between the hosts", func(t *testing.T) {
		capture, err := l.CaptureUnderlay("ipip")
		if err != nil {
			t.Fatal(err)
		}
		_, perr := Exec(h1.Container, "ping", "-c", "3", "-i", "0.2", h2.ContainerIP().String())
		_, decoded, err := capture.Stop()
		if perr != nil || err != nil {
			t.Fatalf("ping %v, capture %v", perr, err)
		}
		inner := fmt.Sprintf("IP %s > %s: IP %s > %s: ICMP echo request", h1.PublicIP, h2.PublicIP, h1.ContainerIP(), h2.ContainerIP())
		if n := strings.Count(decoded, inner); n != 3 {
			t.Errorf("%d of 3 echo requests seen as %q:\n%s", n, inner, decoded[:min(len(decoded), 2000)])
		}
	})

	t.Run("IP-in-IP is accepted from peers only", func(t *testing.T) {
		// Issue 30, item 5: the same IP-in-IP packet, for h2's container,
		// reaches it from a peer and is dropped from an underlay address
		// that holds no lease (counted by source).
		rogue, rogueIP, err := l.AddRogue()
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.AddrPortFrom(h2.ContainerIP(), 7777)
		inner := func(text string) []byte {
			return InnerUDP(netip.AddrPortFrom(h1.Subnet.Addr().Next().Next(), 4444), dst, []byte(text))
		}
		got, err := ReceiveUDP(h2.Container, dst, 1500*time.Millisecond, func() {
			for range 3 {
				SendIPIP(rogue, rogueIP, h2.PublicIP, inner("from-rogue"))
				SendIPIP(h1.Name, h1.PublicIP, h2.PublicIP, inner("from-peer"))
			}
		})
		if text := strings.Join(got, "; "); err != nil || strings.Contains(text, "from-rogue") || !strings.Contains(text, "from-peer") {
			t.Errorf("the container received %q (%v); want the peer's packets and none of %s's", text, err, rogueIP)
		}
		checkTunnelDrops(t, h2, rogueIP, 3)
	})

	t.Run("restart keeps the device and the TCP stream", func(t *testing.T) {
		before, _ := Exec(h1.Name, "ip", "-o", "link", "show", "weft.ipip")
		checkStream(t, l, h1, h2, 5005, "a restart of weftd (ipip)", func() { restartWeftd(t, l, h1) })
		after, _ := Exec(h1.Name, "ip", "-o", "link", "show", "weft.ipip")
		if index := func(s string) string { return strings.SplitN(s, ":", 2)[0] }; before == "" || index(before) != index(after) {
			t.Errorf("device was recreated by the restart: %q -> %q", before, after)
		}
	})

	t.Run("a host that leaves loses its route", func(t *testing.T) {
		l.StopWeftd(h3, syscall.SIGTERM)
		if err := l.Store().Delete(ctx, lease.SubnetKey(h3.Subnet)); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*Host{h1, h2} {
			eventually(t, "h3's route gone from "+h.Name, 10*time.Second, func() error {
				if out, _ := routeTo(h, h3.Subnet.String()); out != "" {
					return fmt.Errorf("still there: %s", out)
				}
				return nil
			})
		}
		if err := l.Ping(h1, h2); err != nil {
			t.Errorf("h1 -> h2 after h3 left: %v", err)
		}
	})
}

// TestIPIPWithoutTheModule: on a kernel without ipip (this machine's),
// weftd says what is missing and what to do, and leases nothing.
func TestIPIPWithoutTheModule(t *testing.T) {
	if kernelIPIP {
		t.Skip("this kernel has ipip")
	}
	l := newLab(t, Options{Hosts: 1})
	h := l.Hosts[0]
	startWithConfig(t, l, h, fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"ipip"}}`, DefaultNetwork),
		"this kernel has no ipip support (load the ipip module: modprobe ipip), or use vxlan")
	if records, _, _ := l.Store().List(context.Background()); len(records) != 0 {
		t.Errorf("a lease was written: %v", records)
	}
}

// TestFlannelIPIPHost runs an ipip cluster with one host set up as
// flanneld's ipip backend sets up its own: a lease written byte for byte as
// flanneld writes it (shared/flannel/ipip.etcd.txt), a flannel.ipip device
// with the subnet's network address and a route per weft host via its
// PublicIP, onlink. Pings pass both ways. Only the VM tier has ipip.
func TestFlannelIPIPHost(t *testing.T) {
	if !kernelIPIP {
		t.Skip("this kernel has no ipip; the VM tier (make vmtest) runs this test on Debian's kernel")
	}
	l := startCluster(t, Options{Hosts: 2, Backend: backends.IPIP})
	f := addFlannelHost(t, l, 203)
	flannelAddr := f.Subnet.Addr() // flanneld puts its subnet's network address on flannel.ipip
	cmds := [][]string{
		{"ip", "-n", f.Name, "link", "add", "flannel.ipip", "type", "ipip", "local", f.PublicIP.String()},
		{"ip", "-n", f.Name, "link", "set", "flannel.ipip", "mtu", "1480", "up"},
		{"ip", "-n", f.Name, "addr", "add", netip.PrefixFrom(flannelAddr, 32).String(), "dev", "flannel.ipip"},
	}
	for _, h := range l.Hosts {
		cmds = append(cmds, []string{"ip", "-n", f.Name, "route", "add", h.Subnet.String(), "via", h.PublicIP.String(), "dev", "flannel.ipip", "onlink"})
	}
	if err := RunAll(cmds...); err != nil {
		t.Fatal(err)
	}
	f.publish(t, l, fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"ipip"}`, f.PublicIP))
	f.checkPings(t, l, flannelAddr)
}
