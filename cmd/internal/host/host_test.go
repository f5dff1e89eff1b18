package host_test

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/cmd/internal/host"
)

const extLines = "addr 192.168.77.1/24 dev eth0\nlink eth0 veth mtu 1500 up\n"

func checkState(t *testing.T, k *netkerneltest.Kernel, want string) {
	t.Helper()
	if got := k.State(); got != want {
		t.Fatalf("kernel state:\n%s\nwant:\n%s", got, want)
	}
}

// TestEnsureBlackhole: the blackhole route for this host's subnet is added
// once, beside the bridge's own route to the same subnet, and moves with
// the lease.
func TestEnsureBlackhole(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	bridge := netlink.Route{LinkIndex: ext.Index, Dst: netkernel.IPNet(netip.MustParsePrefix("10.5.34.0/24")), Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK}
	if err := k.RouteReplace(&bridge); err != nil {
		t.Fatal(err)
	}
	subnet := netip.MustParsePrefix("10.5.34.0/24")
	for range 2 {
		if err := host.EnsureBlackhole(k, subnet, netip.Prefix{}); err != nil {
			t.Fatal(err)
		}
	}
	checkState(t, k, extLines+"route 10.5.34.0/24 dev eth0 scope link\nroute blackhole 10.5.34.0/24 metric 4242\n")
	writes := k.Writes()
	host.EnsureBlackhole(k, subnet, subnet)
	if k.Writes() != writes {
		t.Error("a blackhole route already there was written again")
	}
	if err := host.EnsureBlackhole(k, netip.MustParsePrefix("10.5.77.0/24"), subnet); err != nil {
		t.Fatal(err)
	}
	checkState(t, k, extLines+"route 10.5.34.0/24 dev eth0 scope link\nroute blackhole 10.5.77.0/24 metric 4242\n")
	if err := host.RemoveBlackhole(k, netip.MustParsePrefix("10.5.77.0/24")); err != nil {
		t.Fatal(err)
	}
	checkState(t, k, extLines+"route 10.5.34.0/24 dev eth0 scope link\n")
	if err := host.RemoveBlackhole(k, netip.MustParsePrefix("10.5.77.0/24")); err != nil {
		t.Errorf("removing a missing blackhole route: %v", err)
	}
}
