package hostgw

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/mesh"
)

// TestApplyOnFakeKernel walks the backend through whole applies, drift,
// deltas and cleanup on the in-memory kernel; TestApplyInNetns does the
// same against the real one.
func TestApplyOnFakeKernel(t *testing.T) {
	k := netkerneltest.NewKernel()
	e := k.AddExternal("ext0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	e.Name = "ext0"
	foreign := netlink.Route{LinkIndex: e.Index, Dst: netkernel.IPNet(netip.MustParsePrefix("10.5.99.0/24")),
		Gw: netip.MustParseAddr("192.168.77.99").AsSlice(), Table: unix.RT_TABLE_MAIN}
	k.RouteReplace(&foreign)
	b := New(e, k, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	base := "addr 192.168.77.1/24 dev ext0\nlink ext0 veth mtu 1500 up\n"
	check := func(when, routes string) {
		t.Helper()
		if got, want := k.State(), base+routes+"route 10.5.99.0/24 via 192.168.77.99 dev ext0\n"; got != want {
			t.Fatalf("%s:\n%s\nwant:\n%s", when, got, want)
		}
	}

	two := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.2"), peer("10.5.3.0/24", "192.168.77.3")}}
	if err := b.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	twoRoutes := "route 10.5.2.0/24 via 192.168.77.2 dev ext0 proto 87\nroute 10.5.3.0/24 via 192.168.77.3 dev ext0 proto 87\n"
	check("after the first apply", twoRoutes)
	writes := k.Writes()
	if err := b.Apply(ctx, two); err != nil || k.Writes() != writes {
		t.Fatalf("an apply with nothing to change: %v, %d writes", err, k.Writes()-writes)
	}
	k.DeleteRoute("10.5.3.0/24")
	if err := b.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	check("after drift repair", twoRoutes)

	delta := mesh.Delta{Old: []mesh.Peer{peer("10.5.3.0/24", "192.168.77.3")},
		New: []mesh.Peer{peer("10.5.3.0/24", "192.168.77.33"), peer("10.5.5.0/24", "192.168.77.5")}}
	if err := b.ApplyDelta(ctx, delta); err != nil {
		t.Fatal(err)
	}
	check("after a delta", "route 10.5.2.0/24 via 192.168.77.2 dev ext0 proto 87\n"+
		"route 10.5.3.0/24 via 192.168.77.33 dev ext0 proto 87\nroute 10.5.5.0/24 via 192.168.77.5 dev ext0 proto 87\n")

	bad := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.22"), peer("10.5.4.0/24", "10.200.0.4")}}
	if err := b.Apply(ctx, bad); err == nil || !strings.Contains(err.Error(), "peer 10.5.4.0-24") {
		t.Fatalf("Apply with an off-link peer = %v", err)
	}
	check("after an apply with an off-link peer", "route 10.5.2.0/24 via 192.168.77.22 dev ext0 proto 87\n")

	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	check("after cleanup", "")
}
