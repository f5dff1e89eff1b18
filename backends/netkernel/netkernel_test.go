package netkernel_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/underlay"
)

func route(ext underlay.ExternalInterface, dst, via string, proto netlink.RouteProtocol) netlink.Route {
	return netlink.Route{LinkIndex: ext.Index, Dst: netkernel.IPNet(netip.MustParsePrefix(dst)),
		Gw: netip.MustParseAddr(via).AsSlice(), Protocol: proto, Table: unix.RT_TABLE_MAIN}
}

func checkState(t *testing.T, k *netkerneltest.Kernel, want string) {
	t.Helper()
	if got := k.State(); got != want {
		t.Errorf("kernel state:\n%s\nwant:\n%s", got, want)
	}
}

const extLines = "addr 192.168.77.1/24 dev eth0\nlink eth0 veth mtu 1500 up\n"

// TestSyncRoutes: wanted routes missing or with another gateway are set,
// weft's routes nothing wants are removed, others' routes are untouched,
// and one failing route does not stop the rest.
func TestSyncRoutes(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	for _, r := range []netlink.Route{
		route(ext, "10.5.2.0/24", "192.168.77.2", netkernel.RouteProtocol),  // right
		route(ext, "10.5.3.0/24", "192.168.77.99", netkernel.RouteProtocol), // moved host
		route(ext, "10.5.9.0/24", "192.168.77.9", netkernel.RouteProtocol),  // host gone
		route(ext, "10.9.0.0/16", "192.168.77.254", 0),                      // not weft's
	} {
		if err := k.RouteReplace(&r); err != nil {
			t.Fatal(err)
		}
	}
	owned, err := netkernel.OwnedRoutes(k)
	if err != nil || len(owned) != 3 {
		t.Fatalf("OwnedRoutes = %d routes, %v; want weft's 3", len(owned), err)
	}
	want := []netlink.Route{
		route(ext, "10.5.2.0/24", "192.168.77.2", netkernel.RouteProtocol),
		route(ext, "10.5.3.0/24", "192.168.77.3", netkernel.RouteProtocol),
		route(ext, "10.5.4.0/24", "192.168.77.4", netkernel.RouteProtocol),
		route(ext, "10.5.5.0/24", "192.168.77.5", netkernel.RouteProtocol),
	}
	// 10.5.4.0/24 fails; everything else must still happen.
	k.Fail = func(op string) error {
		if op == "route replace 10.5.4.0/24" {
			return unix.ENETUNREACH
		}
		return nil
	}
	current, err := netkernel.OwnedHops(k, false, func(netip.Prefix, netkernel.Hop) bool { return true })
	if err != nil || len(current) != 3 {
		t.Fatalf("OwnedHops = %d routes, %v; want weft's 3", len(current), err)
	}
	writes := k.Writes()
	errs := netkernel.SyncRoutes(k, current, want, nil)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "route 10.5.4.0/24 via 192.168.77.4") || !errors.Is(errs[0], unix.ENETUNREACH) {
		t.Errorf("errors = %v, want one naming 10.5.4.0/24", errs)
	}
	if n := k.Writes() - writes; n != 3 {
		t.Errorf("%d writes, want 3 (fix 10.5.3, add 10.5.5, remove 10.5.9): the right route was rewritten", n)
	}
	checkState(t, k, extLines+`route 10.5.2.0/24 via 192.168.77.2 dev eth0 proto 87
route 10.5.3.0/24 via 192.168.77.3 dev eth0 proto 87
route 10.5.5.0/24 via 192.168.77.5 dev eth0 proto 87
route 10.9.0.0/16 via 192.168.77.254 dev eth0
`)
	// A route already gone (removed by hand) is not an error when removing it.
	k.Fail = nil
	gone := map[netip.Prefix]netkernel.Hop{netip.MustParsePrefix("10.5.8.0/24"): {Link: ext.Index, Gw: netip.MustParseAddr("192.168.77.8")}}
	if errs := netkernel.SyncRoutes(k, gone, nil, nil); len(errs) != 0 {
		t.Errorf("removing a route that is already gone: %v", errs)
	}
}

// TestEnsureTunnelLink: a tunnel device left in any state (wrong MTU, an
// older subnet's address, an older Network's route, down) ends with
// exactly weft's MTU, address and route, and up; a second call writes
// nothing.
func TestEnsureTunnelLink(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	k.AddTUN("weft0", 1500)
	tun, _ := k.LinkByName("weft0")
	if err := k.AddrAdd(tun, &netlink.Addr{IPNet: netkernel.IPNet(netip.MustParsePrefix("10.5.77.0/32"))}); err != nil {
		t.Fatal(err)
	}
	old := netlink.Route{LinkIndex: tun.Attrs().Index, Dst: netkernel.IPNet(netip.MustParsePrefix("10.4.0.0/16")),
		Protocol: netkernel.RouteProtocol, Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK}
	if err := k.RouteReplace(&old); err != nil {
		t.Fatal(err)
	}
	mine := route(ext, "10.5.2.0/24", "192.168.77.2", netkernel.RouteProtocol) // another device's: kept
	if err := k.RouteReplace(&mine); err != nil {
		t.Fatal(err)
	}
	self, network := netip.MustParsePrefix("10.5.34.0/24"), netip.MustParsePrefix("10.5.0.0/16")
	if errs := netkernel.EnsureTunnelLink(k, "weft0", 1472, self, network); len(errs) != 0 {
		t.Fatal(errs)
	}
	want := `addr 10.5.34.0/32 dev weft0
addr 192.168.77.1/24 dev eth0
link eth0 veth mtu 1500 up
link weft0 tuntap mtu 1472 up
route 10.5.0.0/16 dev weft0 proto 87 scope link
route 10.5.2.0/24 via 192.168.77.2 dev eth0 proto 87
`
	checkState(t, k, want)
	writes := k.Writes()
	if errs := netkernel.EnsureTunnelLink(k, "weft0", 1472, self, network); len(errs) != 0 || k.Writes() != writes {
		t.Errorf("second call: %v, %d writes; want none", errs, k.Writes()-writes)
	}
	if errs := netkernel.EnsureTunnelLink(k, "weft9", 1472, self, network); len(errs) != 1 || !strings.Contains(errs[0].Error(), "finding weft9") {
		t.Errorf("missing device: %v", errs)
	}
}

// TestEnsureOnlyAddressReportsEachFailure: one address that cannot be
// removed is named, and the wanted one is still added.
func TestEnsureOnlyAddressReportsEachFailure(t *testing.T) {
	k := netkerneltest.NewKernel()
	k.AddTUN("weft0", 1500)
	tun, _ := k.LinkByName("weft0")
	for _, a := range []string{"10.5.7.0/32", "10.5.8.0/32"} {
		k.AddrAdd(tun, &netlink.Addr{IPNet: netkernel.IPNet(netip.MustParsePrefix(a))})
	}
	k.Fail = func(op string) error {
		if op == "addr del 10.5.7.0/32 dev weft0" {
			return fmt.Errorf("refused")
		}
		return nil
	}
	errs := netkernel.EnsureOnlyAddress(k, tun, netip.MustParsePrefix("10.5.34.0/32"))
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "removing stale address 10.5.7.0/32 from weft0") {
		t.Errorf("errors = %v", errs)
	}
	checkState(t, k, "addr 10.5.34.0/32 dev weft0\naddr 10.5.7.0/32 dev weft0\nlink weft0 tuntap mtu 1500 down\n")
}
