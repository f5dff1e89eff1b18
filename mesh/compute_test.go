package mesh

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/lease"
)

func testConfig(t *testing.T) *lease.Config {
	t.Helper()
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func mkLease(subnet, ip string, rev int64) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Revision: rev,
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "host-gw"}}
}

// render prints a Desired state as text, one line per peer or skip.
func render(d Desired) string {
	var b strings.Builder
	for _, p := range d.Peers {
		fmt.Fprintf(&b, "peer %s via %s\n", p.Subnet, p.PublicIP)
	}
	for _, s := range d.Skipped {
		fmt.Fprintf(&b, "skip %s: %s\n", s.Key, s.Reason)
	}
	return b.String()
}

func TestCompute(t *testing.T) {
	self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
	other := mkLease("10.5.9.0/24", "192.168.50.9", 9)
	other.Attrs.BackendType = "vxlan"
	tests := []struct {
		name   string
		leases []lease.Lease
		want   string
	}{
		{"alone", []lease.Lease{self}, ""},
		{"two peers sorted", []lease.Lease{self, mkLease("10.5.3.0/24", "192.168.50.3", 5), mkLease("10.5.2.0/24", "192.168.50.2", 7)},
			"peer 10.5.2.0/24 via 192.168.50.2\npeer 10.5.3.0/24 via 192.168.50.3\n"},
		{"outside network", []lease.Lease{self, mkLease("10.6.2.0/24", "192.168.50.2", 2)},
			"skip 10.6.2.0-24: subnet 10.6.2.0/24 is outside Network 10.5.0.0/16\n"},
		{"wider than network", []lease.Lease{self, mkLease("10.0.0.0/8", "192.168.50.2", 2)},
			"skip 10.0.0.0-8: subnet 10.0.0.0/8 is outside Network 10.5.0.0/16\n"},
		{"wrong length", []lease.Lease{self, mkLease("10.5.2.0/25", "192.168.50.2", 2)},
			"skip 10.5.2.0-25: subnet 10.5.2.0/25 is not a /24 (SubnetLen)\n"},
		{"other backend", []lease.Lease{self, other}, `skip 10.5.9.0-24: runs backend "vxlan", this network uses "host-gw"` + "\n"},
		{"own public ip", []lease.Lease{self, mkLease("10.5.2.0/24", "192.168.50.1", 2)},
			"skip 10.5.2.0-24: PublicIP 192.168.50.1 is this host's own\n"},
		{"overlap keeps first writer", []lease.Lease{self, mkLease("10.5.4.0/24", "192.168.50.5", 9), mkLease("10.5.4.0/24", "192.168.50.4", 3)},
			"peer 10.5.4.0/24 via 192.168.50.4\nskip 10.5.4.0-24: subnet 10.5.4.0/24 overlaps 10.5.4.0/24, leased earlier\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(Compute(self, tt.leases, testConfig(t)))
			if got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestComputeOrderIndependent walks the same lease set in many orders.
func TestComputeOrderIndependent(t *testing.T) {
	self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
	leases := []lease.Lease{self}
	for i := 2; i < 30; i++ {
		leases = append(leases, mkLease(fmt.Sprintf("10.5.%d.0/24", i), fmt.Sprintf("192.168.50.%d", i), int64(i)))
	}
	want := render(Compute(self, leases, testConfig(t)))
	for i := range 20 {
		shuffled := append([]lease.Lease(nil), leases...)
		for j := range shuffled {
			k := (j*7 + i*13) % len(shuffled)
			shuffled[j], shuffled[k] = shuffled[k], shuffled[j]
		}
		if got := render(Compute(self, shuffled, testConfig(t))); got != want {
			t.Fatalf("order %d changed the result", i)
		}
	}
}

// BenchmarkCompute10k is the pure part of one lease change at 10,000 peers.
func BenchmarkCompute10k(b *testing.B) {
	cfg, _ := lease.ParseConfig([]byte(`{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}`))
	self := mkLease("10.0.1.0/24", "192.168.0.1", 1)
	leases := []lease.Lease{self}
	for i := 2; i < 10002; i++ {
		leases = append(leases, mkLease(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256), fmt.Sprintf("172.16.%d.%d", i/256, i%256), int64(i)))
	}
	b.ReportAllocs()
	for b.Loop() {
		if d := Compute(self, leases, cfg); len(d.Peers) != 10000 {
			b.Fatalf("%d peers", len(d.Peers))
		}
	}
}

// TestComputeRefusesUnreachablePublicIPs: a lease whose PublicIP no host
// can have is skipped with its reason; a real peer beside it stays.
func TestComputeRefusesUnreachablePublicIPs(t *testing.T) {
	self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
	leases := []lease.Lease{mkLease("10.5.2.0/24", "192.168.50.2", 2)}
	want := "peer 10.5.2.0/24 via 192.168.50.2\n"
	for i, c := range []struct{ ip, why string }{
		{"0.0.0.0", "is unspecified"},
		{"127.0.0.1", "is a loopback address"},
		{"224.0.0.1", "is a multicast address"},
		{"255.255.255.255", "is the limited broadcast address"},
		{"169.254.7.1", "is link-local"},
		{"10.5.7.9", "is inside the overlay Network 10.5.0.0/16 (encapsulated packets would loop into the overlay)"},
	} {
		subnet := fmt.Sprintf("10.5.%d.0/24", 10+i)
		leases = append(leases, mkLease(subnet, c.ip, int64(10+i)))
		want += fmt.Sprintf("skip 10.5.%d.0-24: PublicIP %s %s; no host can be reached there\n", 10+i, c.ip, c.why)
	}
	if got := render(Compute(self, leases, testConfig(t))); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestComputeDualStack: on a dual-stack network a peer carries its IPv6
// half; a lease without one is still an IPv4 peer; a wrong IPv6 half skips
// the lease; on an IPv4-only network the IPv6 half is not ours to route.
func TestComputeDualStack(t *testing.T) {
	dual, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00:5::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	mk6 := func(subnet, ip, subnet6, ip6 string, rev int64) lease.Lease {
		l := mkLease(subnet, ip, rev)
		if subnet6 != "" {
			l.IPv6Subnet = netip.MustParsePrefix(subnet6)
		}
		if ip6 != "" {
			a := netip.MustParseAddr(ip6)
			l.Attrs.PublicIPv6 = &a
		}
		return l
	}
	render6 := func(d Desired) string {
		var b strings.Builder
		for _, p := range d.Peers {
			fmt.Fprintf(&b, "peer %s %s via %s %s\n", p.Subnet, p.IPv6Subnet(), p.PublicIP, p.PublicIPv6())
		}
		for _, s := range d.Skipped {
			fmt.Fprintf(&b, "skip %s: %s\n", s.Key, s.Reason)
		}
		return b.String()
	}
	self := mk6("10.5.1.0/24", "192.168.50.1", "fc00:5:0:1::/64", "fd00:50::1", 1)
	leases := []lease.Lease{self,
		mk6("10.5.2.0/24", "192.168.50.2", "fc00:5:0:2::/64", "fd00:50::2", 2),
		mk6("10.5.3.0/24", "192.168.50.3", "", "", 3),
		mk6("10.5.4.0/24", "192.168.50.4", "fc00:6:0:4::/64", "fd00:50::4", 4),
		mk6("10.5.5.0/24", "192.168.50.5", "fc00:5:0:5::/64", "", 5),
		mk6("10.5.6.0/24", "192.168.50.6", "fc00:5:0:6::/64", "fe80::6", 6),
		mk6("10.5.7.0/24", "192.168.50.7", "fc00:5:0:2::/64", "fd00:50::7", 7),
		mk6("10.5.8.0/24", "192.168.50.8", "fc00:5:0:8::/80", "fd00:50::8", 8),
		mk6("10.5.9.0/24", "192.168.50.9", "fc00:5:0:9::/64", "fc00:5:0:2::9", 9),
		mk6("10.5.10.0/24", "192.168.50.10", "fc00:5:0:a::/64", "fd00:50::1", 10), // this host's own PublicIPv6
	}
	want := "peer 10.5.2.0/24 fc00:5:0:2::/64 via 192.168.50.2 fd00:50::2\n" +
		"peer 10.5.3.0/24 invalid Prefix via 192.168.50.3 invalid IP\n" +
		"skip 10.5.10.0-24&fc00:5:0:a::-64: PublicIPv6 fd00:50::1 is this host's own\n" +
		"skip 10.5.4.0-24&fc00:6:0:4::-64: IPv6 subnet fc00:6:0:4::/64 is outside IPv6Network fc00:5::/48\n" +
		"skip 10.5.5.0-24&fc00:5:0:5::-64: has IPv6 subnet fc00:5:0:5::/64 but no PublicIPv6 to reach it by\n" +
		"skip 10.5.6.0-24&fc00:5:0:6::-64: PublicIPv6 fe80::6 is link-local; no host can be reached there\n" +
		"skip 10.5.7.0-24&fc00:5:0:2::-64: IPv6 subnet fc00:5:0:2::/64 overlaps fc00:5:0:2::/64, leased earlier\n" +
		"skip 10.5.8.0-24&fc00:5:0:8::-80: IPv6 subnet fc00:5:0:8::/80 is not a /64 (IPv6SubnetLen)\n" +
		"skip 10.5.9.0-24&fc00:5:0:9::-64: PublicIPv6 fc00:5:0:2::9 is inside the overlay IPv6Network fc00:5::/48 (encapsulated packets would loop into the overlay); no host can be reached there\n"
	d := Compute(self, leases, dual)
	if got := render6(d); got != want {
		t.Errorf("dual stack:\n%s\nwant\n%s", got, want)
	}
	if d.IPv6Network != dual.IPv6Network {
		t.Errorf("Desired.IPv6Network = %s", d.IPv6Network)
	}
	v4 := Compute(self, leases[:2], testConfig(t))
	if got := render6(v4); got != "peer 10.5.2.0/24 invalid Prefix via 192.168.50.2 invalid IP\n" {
		t.Errorf("IPv4-only network kept the IPv6 half: %s", got)
	}
}

// TestIPv6Half: the IPv6 half of a dual-stack state is shaped as an IPv4
// one (IPv6 subnets, addresses and data in the IPv4 fields), peers without
// an IPv6 half are left out, and a delta's half follows the same rule.
func TestIPv6Half(t *testing.T) {
	self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
	self.IPv6Subnet = netip.MustParsePrefix("fc00:5:0:1::/64")
	ip6 := netip.MustParseAddr("fd00:50::1")
	self.Attrs.PublicIPv6 = &ip6
	self.Attrs = self.Attrs.WithBackendV6Data([]byte(`{"v6":1}`))
	dual := Peer{Key: "10.5.2.0-24&fc00:5:0:2::-64", Subnet: netip.MustParsePrefix("10.5.2.0/24"), PublicIP: netip.MustParseAddr("192.168.50.2"),
		BackendData: []byte(`{"v4":2}`)}.WithIPv6(netip.MustParsePrefix("fc00:5:0:2::/64"), netip.MustParseAddr("fd00:50::2"), []byte(`{"v6":2}`))
	v4only := Peer{Key: "10.5.3.0-24", Subnet: netip.MustParsePrefix("10.5.3.0/24"), PublicIP: netip.MustParseAddr("192.168.50.3")}
	d := Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), IPv6Network: netip.MustParsePrefix("fc00:5::/48"), Self: self, Peers: []Peer{dual, v4only}}
	half := d.IPv6Half()
	if half.Network.String() != "fc00:5::/48" || half.Self.Subnet.String() != "fc00:5:0:1::/64" || half.Self.Attrs.PublicIP != ip6 || string(half.Self.Attrs.BackendData) != `{"v6":1}` {
		t.Errorf("IPv6 half's network and self: %s %s %s %s", half.Network, half.Self.Subnet, half.Self.Attrs.PublicIP, half.Self.Attrs.BackendData)
	}
	if len(half.Peers) != 1 || half.Peers[0].Key != dual.Key || half.Peers[0].Subnet != dual.IPv6Subnet() || half.Peers[0].PublicIP != dual.PublicIPv6() || string(half.Peers[0].BackendData) != `{"v6":2}` {
		t.Errorf("IPv6 half's peers: %+v", half.Peers)
	}
	delta := Delta{Network: d.Network, IPv6Network: d.IPv6Network, Self: self, Old: []Peer{dual}, New: []Peer{v4only}}.IPv6Half()
	if len(delta.Old) != 1 || delta.Old[0].Subnet != dual.IPv6Subnet() || len(delta.New) != 0 {
		t.Errorf("IPv6 half of a delta: %+v", delta)
	}
}

// TestComputeIPv6Only: on an IPv6-only network every lease has flannel's
// empty IPv4 half; this host is found by its IPv6 subnet, peers by theirs,
// a lease without an IPv6 half is skipped, and one claiming this host's
// PublicIPv6 too.
func TestComputeIPv6Only(t *testing.T) {
	cfg, err := lease.ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(subnet6, ip6 string, rev int64) lease.Lease {
		a := netip.MustParseAddr(ip6)
		l := lease.Lease{Revision: rev, Attrs: lease.Attrs{PublicIP: netip.IPv4Unspecified(), PublicIPv6: &a, BackendType: "host-gw"}}
		if subnet6 != "" {
			l.IPv6Subnet = netip.MustParsePrefix(subnet6)
		}
		return l
	}
	self := mk("fc00:5:0:1::/64", "fd50::1", 1)
	d := Compute(self, []lease.Lease{self, mk("fc00:5:0:2::/64", "fd50::2", 2), mk("fc00:5:0:3::/64", "fd50::1", 3), mk("", "fd50::4", 4)}, cfg)
	var got []string
	for _, p := range d.Peers {
		got = append(got, fmt.Sprintf("peer %s via %s", p.IPv6Subnet(), p.PublicIPv6()))
	}
	for _, s := range d.Skipped {
		got = append(got, "skip "+s.Key+": "+s.Reason)
	}
	want := []string{"peer fc00:5:0:2::/64 via fd50::2",
		"skip 0.0.0.0-0: has no IPv6 subnet, and this network is IPv6-only",
		"skip 0.0.0.0-0&fc00:5:0:3::-64: PublicIPv6 fd50::1 is this host's own"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("IPv6-only:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestComputeIPv6OnlyAlloc: on an IPv6-only alloc network, leases with no
// BackendType (as flannel's alloc writes them) are peers, not udp hosts'.
func TestComputeIPv6OnlyAlloc(t *testing.T) {
	cfg, err := lease.ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Backend.Untyped = true // as backends.CheckConfig sets it for alloc
	mk := func(subnet6, ip6 string, rev int64) lease.Lease {
		a := netip.MustParseAddr(ip6)
		return lease.Lease{Revision: rev, IPv6Subnet: netip.MustParsePrefix(subnet6), Attrs: lease.Attrs{PublicIP: netip.IPv4Unspecified(), PublicIPv6: &a}}
	}
	self := mk("fc00:5:0:1::/64", "fd50::1", 1)
	d := Compute(self, []lease.Lease{self, mk("fc00:5:0:2::/64", "fd50::2", 2)}, cfg)
	if len(d.Peers) != 1 || len(d.Skipped) != 0 {
		t.Errorf("peers %+v skipped %+v", d.Peers, d.Skipped)
	}
}

// TestPathDuringASwitch: a host reaches each peer over the config's
// backend when the peer speaks it (its BackendType, or its WeftAlso
// during a switch), with that backend's data; else over a backend it
// still runs (its Preference's legacy backends); else the lease is skipped.
func TestPathDuringASwitch(t *testing.T) {
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
	vxlanData := `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`
	wgData := `{"PublicKey":"k","Port":51820}`
	switching := mkLease("10.5.2.0/24", "192.168.50.2", 2)
	switching.Attrs.BackendType, switching.Attrs.BackendData = "vxlan", []byte(vxlanData)
	switching.Attrs = switching.Attrs.WithAlso([]lease.PathAttrs{{BackendType: "wireguard", BackendData: []byte(wgData)}})
	behind := mkLease("10.5.3.0/24", "192.168.50.3", 3)
	behind.Attrs.BackendType, behind.Attrs.BackendData = "vxlan", []byte(vxlanData)
	udp := mkLease("10.5.4.0/24", "192.168.50.4", 4)
	udp.Attrs.BackendType = ""
	leases := []lease.Lease{self, switching, behind, udp}

	paths := func(d Desired) string {
		var out []string
		for _, p := range d.Peers {
			out = append(out, fmt.Sprintf("%s %s %s", p.Subnet, p.BackendType, p.BackendData))
		}
		for _, s := range d.Skipped {
			out = append(out, s.Key+" skipped")
		}
		return strings.Join(out, "; ")
	}
	if got, want := paths(Compute(self, leases, cfg)), `10.5.2.0/24 wireguard `+wgData+`; 10.5.3.0-24 skipped; 10.5.4.0-24 skipped`; got != want {
		t.Errorf("wireguard alone:\n got %s\nwant %s", got, want)
	}
	withLegacy := func(legacy ...string) Desired {
		shared := make([]*lease.Lease, len(leases))
		for i := range leases {
			shared[i] = &leases[i]
		}
		return ComputeShared(self, shared, cfg, Preference{Legacy: legacy}, nil)
	}
	if got, want := paths(withLegacy("vxlan")), `10.5.2.0/24 wireguard `+wgData+`; 10.5.3.0/24 vxlan `+vxlanData+`; 10.5.4.0-24 skipped`; got != want {
		t.Errorf("wireguard, still speaking vxlan:\n got %s\nwant %s", got, want)
	}
	if got, want := paths(withLegacy("vxlan", "udp")), `10.5.2.0/24 wireguard `+wgData+`; 10.5.3.0/24 vxlan `+vxlanData+`; 10.5.4.0/24  `; got != want {
		t.Errorf("a udp host's lease, which has no BackendType:\n got %s\nwant %s", got, want)
	}
}

// TestSharedPublicIPOnWireGuard: two hosts behind NATs at two sites often
// have the same private address. On wireguard, which tells peers apart by
// key, a lease with this host's own PublicIP (or PublicIPv6 on an
// IPv6-only network) is a peer; on the backends that send to the address
// it stays skipped.
func TestSharedPublicIPOnWireGuard(t *testing.T) {
	for _, tt := range []struct {
		config string
		self   lease.Lease
		twin   lease.Lease
		want   string
	}{
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`,
			lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.0.2"), BackendType: "wireguard"}},
			lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Revision: 2, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.0.2"), BackendType: "wireguard"}},
			"peer 10.5.2.0/24 via 172.31.0.2\n"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`,
			lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.0.2"), BackendType: "vxlan"}},
			lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Revision: 2, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.0.2"), BackendType: "vxlan"}},
			"skip 10.5.2.0-24: PublicIP 172.31.0.2 is this host's own\n"},
	} {
		cfg, err := lease.ParseConfig([]byte(tt.config))
		if err != nil {
			t.Fatal(err)
		}
		if got := render(Compute(tt.self, []lease.Lease{tt.self, tt.twin}, cfg)); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.config, got, tt.want)
		}
	}
}

// TestAdmit: a lease Admit refuses is skipped with its reason, on every
// backend (wireguard's leases too, which are told apart by key), in a
// whole computation and in a delta; the others stay peers.
func TestAdmit(t *testing.T) {
	for _, backend := range []string{"host-gw", "vxlan", "wireguard"} {
		cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"` + backend + `"}}`))
		if err != nil {
			t.Fatal(err)
		}
		self := mkLease("10.5.1.0/24", "192.168.50.1", 1)
		member, stranger := mkLease("10.5.2.0/24", "192.168.50.2", 2), mkLease("10.5.3.0/24", "192.168.50.3", 3)
		for _, l := range []*lease.Lease{&self, &member, &stranger} {
			l.Attrs.BackendType = backend
			if backend == "vxlan" {
				l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)
			}
			if backend == "wireguard" {
				l.Attrs.BackendData = []byte(`{"PublicKey":"` + strings.Repeat("A", 43) + `=","Port":51820}`)
			}
		}
		admit := func(l *lease.Lease) string {
			if l.Subnet == stranger.Subnet {
				return "no certified member: test"
			}
			return ""
		}
		d := ComputeShared(self, []*lease.Lease{&member, &stranger}, cfg, Preference{}, admit)
		if got, want := render(d), "peer 10.5.2.0/24 via 192.168.50.2\nskip 10.5.3.0-24: no certified member: test\n"; got != want {
			t.Errorf("%s, whole:\n got %s\nwant %s", backend, got, want)
		}
		// A delta from a state that admitted both (the revocation came
		// with the lease's change).
		m := newModel(ComputeShared(self, []*lease.Lease{&member, &stranger}, cfg, Preference{}, nil))
		_, skips := m.diff([]string{stranger.Key()}, func(string) (lease.Lease, bool) { return stranger, true }, cfg, Preference{}, admit)
		if len(skips) != 1 || skips[0].Reason != "no certified member: test" {
			t.Errorf("%s, delta: skips %v, want the refused lease skipped with its reason", backend, skips)
		}
	}
}
