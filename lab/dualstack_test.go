package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// dualStackBackends are the backends that carry IPv6 (udp is IPv4 only,
// as flannel's).
var dualStackBackends = []string{backends.HostGW, backends.VXLAN, backends.WireGuard}

// TestDualStackCluster: on a dual-stack network every host leases an IPv4
// and an IPv6 subnet under flannel's joined key, publishes its PublicIPv6,
// writes both families to the subnet file, and every container reaches
// every other in both families, on each backend that carries IPv6.
func TestDualStackCluster(t *testing.T) {
	for _, backend := range dualStackBackends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			l := startCluster(t, Options{Hosts: 3, Backend: backend, IPv6: true})
			checkDualStackLeases(t, l)
			checkDualStackDevices(t, l, backend)
			if table, ok := l.PingMatrix(); !strings.Contains(table, "fc00:5:") || !ok {
				t.Fatalf("ping matrix lacks IPv6 or failed:\n%s", table)
			}
			if backend == backends.WireGuard {
				// Mode "separate" (the default): IPv4 over the IPv4
				// underlay on 51820, IPv6 over the IPv6 one on 51821,
				// nothing in clear in either family.
				h1, h2 := l.Hosts[0], l.Hosts[1]
				checkOuterFamily(t, checkEncryptedTo(t, l, h1, h2.ContainerIP(), 51820), "IP ")
				checkOuterFamily(t, checkEncryptedTo(t, l, h1, h2.ContainerIPv6(), 51821), "IP6 ")
			}
		})
	}
}

// TestDualStackWireGuardOneDevice: Modes "ipv6" and "auto" carry both
// families through one device, weft-wg: in "ipv6" every peer is reached
// over the IPv6 underlay; in "auto" (private IPv4 and ULA IPv6 addresses,
// as in the lab) over IPv4, as flannel's selectMode decides.
func TestDualStackWireGuardOneDevice(t *testing.T) {
	for _, mode := range []struct{ name, outer string }{{"ipv6", "IP6 "}, {"auto", "IP "}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			config := fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":"wireguard","Mode":%q}}`, DefaultNetwork, DefaultIPv6Network, mode.name)
			l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard, IPv6: true, Config: config})
			h1, h2 := l.Hosts[0], l.Hosts[1]
			if out, err := Exec(h1.Name, "ip", "-o", "link"); err != nil || strings.Contains(out, "weft-wg-v6") {
				t.Errorf("a second device in Mode %q: %v\n%s", mode.name, err, out)
			}
			for _, dst := range []netip.Addr{h2.ContainerIP(), h2.ContainerIPv6()} {
				checkOuterFamily(t, checkEncryptedTo(t, l, h1, dst, 51820), mode.outer)
			}
		})
	}
}

// checkOuterFamily checks that every WireGuard packet tcpdump printed is
// of one underlay family ("IP " or "IP6 ").
func checkOuterFamily(t *testing.T, packets []string, family string) {
	t.Helper()
	for _, p := range packets {
		if !strings.Contains(p, " "+family) {
			t.Errorf("WireGuard packet not over %q: %s", strings.TrimSpace(family), p)
		}
	}
}

// TestIPv6OnlyCluster: on an IPv6-only network ("EnableIPv4": false) every
// host leases an IPv6 subnet under flannel's key with the empty IPv4 half
// ("0.0.0.0-0&...", PublicIP 0.0.0.0), its subnet file has only the IPv6
// lines, and every container reaches every other over IPv6, on each
// backend that carries IPv6; wireguard's underlay shows no plaintext.
func TestIPv6OnlyCluster(t *testing.T) {
	for _, backend := range dualStackBackends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			l := startCluster(t, Options{Hosts: 3, Backend: backend, IPv6Only: true})
			checkDualStackLeases(t, l)
			for _, h := range l.Hosts {
				data, _ := os.ReadFile(h.SubnetFile())
				if h.Subnet.IsValid() || strings.Contains(string(data), "FLANNEL_SUBNET=") {
					t.Errorf("%s: IPv4 subnet %v on an IPv6-only network; subnet file:\n%s", h.Name, h.Subnet, data)
				}
			}
			records, _, _ := l.Store().List(context.Background())
			for _, r := range records {
				if !strings.HasPrefix(r.Key, "0.0.0.0-0&") || !strings.HasPrefix(string(r.Value), `{"PublicIP":"0.0.0.0","PublicIPv6":"fd50::`) {
					t.Errorf("lease %s = %s, want flannel's IPv6-only form", r.Key, r.Value)
				}
			}
			if table, ok := l.PingMatrix(); strings.Contains(table, "10.5.") || !ok {
				t.Fatalf("ping matrix is not IPv6 only or failed:\n%s", table)
			}
			if backend == backends.WireGuard {
				h1, h2 := l.Hosts[0], l.Hosts[1]
				checkOuterFamily(t, checkEncryptedTo(t, l, h1, h2.ContainerIPv6(), 51821), "IP6 ")
			}
		})
	}
}

// checkDualStackDevices checks what carries the IPv6 half on each host:
// host-gw's routes via the peers' PublicIPv6; vxlan's second device,
// weft-v6.1, over the IPv6 underlay (local PublicIPv6), as flannel's
// flannel-v6.1.
func checkDualStackDevices(t *testing.T, l *Lab, backend string) {
	t.Helper()
	for _, h := range l.Hosts {
		switch backend {
		case backends.HostGW:
			for _, p := range l.Hosts {
				if out, _ := Exec(h.Name, "ip", "-6", "route", "show", p.IPv6Subnet.String(), "proto", "87"); p != h && !strings.Contains(out, "via "+p.PublicIPv6.String()) {
					t.Errorf("%s: route to %s is %q, want via %s", h.Name, p.IPv6Subnet, out, p.PublicIPv6)
				}
			}
		case backends.WireGuard:
			// Kernel WireGuard in the VM tier, wireguard-go's TUN here.
			kind := map[bool]string{true: "wireguard", false: "tun"}[kernelWireGuard]
			for _, dev := range []string{"weft-wg", "weft-wg-v6"} {
				if out, err := Exec(h.Name, "ip", "-d", "link", "show", dev); err != nil || !strings.Contains(out, "\n    "+kind+" ") {
					t.Errorf("%s: %s is not a %s device (Mode separate): %v\n%s", h.Name, dev, kind, err, out)
				}
			}
		case backends.VXLAN:
			out, err := Exec(h.Name, "ip", "-d", "link", "show", "weft-v6.1")
			if err != nil || !strings.Contains(out, "vxlan id 1 local "+h.PublicIPv6.String()) {
				t.Errorf("%s: weft-v6.1 is %q (%v), want vxlan id 1 local %s", h.Name, out, err, h.PublicIPv6)
			}
		}
	}
}

// checkDualStackLeases checks each host's lease in etcd and its subnet
// file against what flannel writes for a dual-stack host.
func checkDualStackLeases(t *testing.T, l *Lab) {
	t.Helper()
	records, _, err := l.Store().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]lease.Lease{}
	for _, r := range records {
		ls, err := lease.DecodeLease(r.Key, r.Value)
		if err != nil {
			t.Fatal(err)
		}
		byKey[r.Key] = ls
	}
	ipv6Network := netip.MustParsePrefix(DefaultIPv6Network)
	for _, h := range l.Hosts {
		if !h.IPv6Subnet.IsValid() || !ipv6Network.Contains(h.IPv6Subnet.Addr()) || h.IPv6Subnet.Bits() != 64 {
			t.Errorf("%s: IPv6 subnet %v, want a /64 of %s", h.Name, h.IPv6Subnet, ipv6Network)
			continue
		}
		key := lease.DualSubnetKey(h.Subnet, h.IPv6Subnet) // "0.0.0.0-0&..." on an IPv6-only network
		ls, ok := byKey[key]
		if !ok {
			t.Errorf("%s: no lease %s in etcd (have %v)", h.Name, key, records)
			continue
		}
		if got := ls.Attrs.PublicIPv6Addr(); got != h.PublicIPv6 {
			t.Errorf("%s: lease PublicIPv6 %v, want %s", h.Name, got, h.PublicIPv6)
		}
		env, err := lease.ReadSubnetFile(h.SubnetFile())
		if err != nil || env.IPv6Network != ipv6Network || env.IPv6Subnet != h.IPv6Subnet {
			t.Errorf("%s: subnet file IPv6 %v %v (%v), want %s %s", h.Name, env.IPv6Network, env.IPv6Subnet, err, ipv6Network, h.IPv6Subnet)
		}
	}
}

// TestDualStackIPMasqAndCleanup: with -ip-masq, IPv6 traffic leaving the
// IPv6Network is masqueraded to the host's PublicIPv6 by ip6tables rules
// like the IPv4 ones, traffic inside it keeps its source, and `weftctl
// cleanup` removes weft's routes and chains of both families.
func TestDualStackIPMasqAndCleanup(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.HostGW, IPv6: true, WeftdArgs: []string{"-ip-masq", "-iptables-resync", "1"}})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	outside := netip.AddrPortFrom(l.underlayAddr6(1), 7000)
	checkMasquerade(t, l, h1, outside, h1.PublicIPv6, netip.AddrPortFrom(h2.ContainerIPv6(), 7001), h2, h1.ContainerIPv6())
	if out, _ := Exec(h1.Name, "ip6tables-save"); !strings.Contains(out, "-A WEFT-POSTRTG -s "+DefaultIPv6Network+" ! -d ff00::/8") {
		t.Errorf("ip6tables lacks weft's masquerade rule:\n%s", out)
	}

	l.StopWeftd(h1, syscall.SIGTERM)
	if out, err := Exec(h1.Name, weftctlBin, "cleanup", "-subnet-file", h1.SubnetFile()); err != nil || !strings.Contains(out, "removed ip6tables chains") {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, cmd := range [][]string{{"ip", "-6", "route", "show", "proto", "87"}, {"ip", "-4", "route", "show", "proto", "87"}} {
		if out, _ := Exec(h1.Name, cmd...); out != "" {
			t.Errorf("routes left (%s): %s", strings.Join(cmd, " "), out)
		}
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if out, _ := Exec(h1.Name, tool); strings.Contains(strings.ToLower(out), "weft") {
			t.Errorf("rules left in %s:\n%s", tool, out)
		}
	}
}

// TestDockerDualStack: real dockerds started from `weftctl docker-opts` on
// a dual-stack network (--ipv6 --fixed-cidr-v6 from FLANNEL_IPV6_SUBNET)
// give every container an address of each family from its host's leases,
// and every container reaches every container on the other hosts in both.
func TestDockerDualStack(t *testing.T) {
	requireDocker(t)
	l := newLab(t, Options{Hosts: 2, Backend: backends.VXLAN, IPv6: true, Docker: true})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	hosts := startDocker(t, l, l.Hosts)
	for _, h := range hosts {
		for _, c := range h.Containers {
			if !h.IPv6Subnet.Contains(c.IPv6) || !h.Subnet.Contains(c.IP) {
				t.Fatalf("%s on %s has %s and %v, want addresses in %s and %s", c.Name, h.Name, c.IP, c.IPv6, h.Subnet, h.IPv6Subnet)
			}
		}
	}
	a, b := hosts[0], hosts[1]
	for _, pair := range [][2]*DockerHost{{a, b}, {b, a}} {
		for _, src := range pair[0].Containers {
			for _, dst := range pair[1].Containers {
				for _, addr := range []netip.Addr{dst.IP, dst.IPv6} {
					eventually(t, fmt.Sprintf("%s -> %s", src.Name, addr), 10*time.Second, func() error { return pair[0].Docker.Ping(src, addr) })
				}
			}
		}
	}
}

// TestDualStackRestartKeepsTCP is the fault suite's restart test over
// IPv6: a TCP stream between containers' IPv6 addresses on the wireguard
// backend (Mode separate: weft-wg-v6 carries it) loses nothing while weftd
// restarts on the sender's and on the receiver's host, and each host keeps
// its IPv6 subnet.
func TestDualStackRestartKeepsTCP(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.WireGuard, IPv6: true})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	subnets := []netip.Prefix{h1.IPv6Subnet, h2.IPv6Subnet}
	for i, restarted := range []*Host{h1, h2} {
		gap := restartGapTo(t, l, h1, h2, h2.ContainerIPv6(), restarted, 5200+i)
		reliability(t, "restart gap over IPv6 (wireguard, weftd restarted on %s): %s", restarted.Name, gap.Round(time.Millisecond))
	}
	if now := []netip.Prefix{h1.IPv6Subnet, h2.IPv6Subnet}; now[0] != subnets[0] || now[1] != subnets[1] {
		t.Errorf("IPv6 subnets changed across restarts: %v, were %v", now, subnets)
	}
}

// TestIfaceRegexIPv6: -iface-regex matching an IPv6 address picks the
// interface that holds it, and that address is the lease's PublicIPv6.
func TestIfaceRegexIPv6(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.HostGW, IPv6: true, WeftdArgs: []string{"-iface-regex", "^fd50:"}})
	checkDualStackLeases(t, l)
	for _, h := range l.Hosts {
		if !strings.Contains(h.LogTail(400), "matched an IPv6 address") {
			t.Errorf("%s: weftd did not say the regex matched an IPv6 address:\n%s", h.Name, h.LogTail(10))
		}
	}
}
