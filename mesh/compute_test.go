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
