package backends

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestDualStackVXLAN: on a dual-stack network the vxlan backend runs a
// second device, weft-v6.1, over the IPv6 underlay with a VTEP MAC of its
// own (published as BackendV6Data), programs each peer's IPv6 half there
// and the IPv4 half on weft.1, and gives containers the smaller MTU.
func TestDualStackVXLAN(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	ext.AddrIPv6 = netip.MustParseAddr("fd77::1")
	ext.Prefixes = append(ext.Prefixes, netip.MustParsePrefix("fd77::/64"))
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Env{Config: cfg, External: ext, PublicIP: ext.Addr, PublicIPv6: ext.AddrIPv6, Kernel: k, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	dual, ok := b.(DualStack)
	if !ok || string(dual.BackendV6Data()) == string(b.BackendData()) || !strings.Contains(string(dual.BackendV6Data()), `"VNI":1`) {
		t.Fatalf("BackendV6Data %s beside BackendData %s: want a VTEP MAC of its own", dual.BackendV6Data(), b.BackendData())
	}
	if b.MTU() != 1430 {
		t.Errorf("MTU %d, want 1430 (1500 less IPv6 VXLAN's 70)", b.MTU())
	}
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	ip6 := netip.MustParseAddr("fd77::1")
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), IPv6Subnet: netip.MustParsePrefix("fc00:5:0:1::/64"),
		Attrs: lease.Attrs{PublicIP: ext.Addr, PublicIPv6: &ip6}}
	peer := mesh.Peer{Key: "10.5.2.0-24&fc00:5:0:2::-64", Subnet: netip.MustParsePrefix("10.5.2.0/24"), PublicIP: netip.MustParseAddr("192.168.77.2"),
		BackendData: []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)}.WithIPv6(netip.MustParsePrefix("fc00:5:0:2::/64"), netip.MustParseAddr("fd77::2"), []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:06:02"}`))
	if err := b.Apply(ctx, mesh.Desired{Network: cfg.Network, IPv6Network: cfg.IPv6Network, Self: self, Peers: []mesh.Peer{peer}}); err != nil {
		t.Fatal(err)
	}
	state := k.State()
	for _, want := range []string{
		"addr 10.5.1.0/32 dev weft.1", "addr fc00:5:0:1::/128 dev weft-v6.1",
		"fdb 02:00:00:00:00:02 dev weft.1 dst 192.168.77.2", "fdb 02:00:00:00:06:02 dev weft-v6.1 dst fd77::2",
		"link weft-v6.1 vxlan mtu 1430 up", "link weft.1 vxlan mtu 1450 up",
		"neigh fc00:5:0:2:: dev weft-v6.1 lladdr 02:00:00:00:06:02 PERMANENT",
		"route 10.5.2.0/24 nhid 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink", "route fc00:5:0:2::/64 via fc00:5:0:2:: dev weft-v6.1 proto 87 onlink",
	} {
		if !strings.Contains(state, want+"\n") && !strings.Contains(state, want+" ") {
			t.Errorf("kernel state lacks %q:\n%s", want, state)
		}
	}
	// The peer's IPv6 half goes; its IPv4 half stays.
	v4only := peer
	v4only = v4only.WithIPv6(netip.Prefix{}, netip.Addr{}, nil)
	delta := mesh.Delta{Network: cfg.Network, IPv6Network: cfg.IPv6Network, Self: self, Old: []mesh.Peer{peer}, New: []mesh.Peer{v4only}}
	if err := b.(mesh.DeltaApplier).ApplyDelta(ctx, delta); err != nil && err != mesh.ErrWholeApply {
		t.Fatal(err)
	}
	state = k.State()
	if strings.Contains(state, "fc00:5:0:2::/64") || !strings.Contains(state, "route 10.5.2.0/24") {
		t.Errorf("after the IPv6 half left:\n%s", state)
	}
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if state := k.State(); strings.Contains(state, "weft") {
		t.Errorf("cleanup left:\n%s", state)
	}
}

// TestDualStackWireGuardPorts: Mode "separate" needs a port per device; a
// config giving both the same is refused as a config error naming the key.
func TestDualStackWireGuardPorts(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"wireguard","ListenPortV6":51820}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateOptions(cfg); err == nil || !strings.Contains(err.Error(), `key "Backend.ListenPortV6": 51820 is ListenPort too`) {
		t.Errorf("same port for both devices: %v", err)
	}
	cfg, _ = ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"wireguard","ListenPortV6":51820,"Mode":"ipv6"}}`))
	if err := ValidateOptions(cfg); err != nil {
		t.Errorf("one device (Mode ipv6) ignores ListenPortV6: %v", err)
	}
}
