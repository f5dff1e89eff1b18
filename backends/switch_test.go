package backends

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
)

// TestRemoveOthers: a host switched to wireguard keeps no vxlan device and
// no host-gw route that would carry traffic in clear, and loses nothing
// that is not weft's.
func TestRemoveOthers(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	if err := k.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "weft.1"}, VxlanId: 1}); err != nil {
		t.Fatal(err)
	}
	k.AddTUN("weft-wg", 1420)
	k.AddTUN("tun7", 1500) // not weft's
	route := func(dst, via string, proto netlink.RouteProtocol) {
		r := netlink.Route{LinkIndex: ext.Index, Dst: netkernel.IPNet(netip.MustParsePrefix(dst)), Gw: netip.MustParseAddr(via).AsSlice(),
			Protocol: proto, Table: unix.RT_TABLE_MAIN}
		if err := k.RouteReplace(&r); err != nil {
			t.Fatal(err)
		}
	}
	route("10.5.2.0/24", "192.168.77.2", netkernel.RouteProtocol) // host-gw's
	route("10.9.0.0/16", "192.168.77.254", 0)                     // the admin's
	removed, err := RemoveOthers(k, []string{WireGuard}, ext, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(removed, "; "); got != "vxlan device weft.1; route 10.5.2.0/24 via 192.168.77.2" {
		t.Errorf("removed %q", got)
	}
	want := `addr 192.168.77.1/24 dev eth0
link eth0 veth mtu 1500 up
link tun7 tuntap mtu 1500 down
link weft-wg tuntap mtu 1420 down
route 10.9.0.0/16 via 192.168.77.254 dev eth0
`
	if got := k.State(); got != want {
		t.Errorf("left:\n%s\nwant:\n%s", got, want)
	}
	if again, err := RemoveOthers(k, []string{WireGuard}, ext, false); err != nil || len(again) != 0 {
		t.Errorf("second run removed %v (%v)", again, err)
	}
}

// TestRemoveOthersIPIPToVXLAN: issue 30, item 11. vxlan owns weft.<VNI>
// only, so a host switched from ipip to vxlan removes weft.ipip (which
// accepts IP-in-IP from any source) instead of taking it for its own.
func TestRemoveOthersIPIPToVXLAN(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	k.AddTUN("weft.ipip", 1480) // the fake has no ipip type; the name decides
	if err := k.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "weft.1"}, VxlanId: 1}); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveOthers(k, []string{VXLAN}, ext, false)
	if err != nil || strings.Join(removed, "; ") != "ipip device weft.ipip" {
		t.Errorf("removed %q (%v), want weft.ipip alone", removed, err)
	}
}
