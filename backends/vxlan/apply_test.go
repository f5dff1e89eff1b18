package vxlan

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestApplyOnFakeKernel checks the whole kernel state the backend leaves,
// as golden text, through applies, a delta and a device deleted by hand;
// TestApplyInNetns checks the same against the real kernel.
func TestApplyOnFakeKernel(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	b, err := New(json.RawMessage(`{"Type":"vxlan"}`), ext, ext.Addr, k, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}
	two := mesh.Desired{Self: self, Peers: []mesh.Peer{
		vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`),
		vxPeer("10.5.3.0/24", "192.168.77.3", `{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}`),
	}}
	apply := func(d mesh.Desired) {
		t.Helper()
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	apply(two)
	want := `addr 10.5.1.0/32 dev weft.1
addr 192.168.77.1/24 dev ext0
fdb 02:00:00:00:00:02 dev weft.1 dst 192.168.77.2 self permanent
fdb 02:00:00:00:00:03 dev weft.1 dst 192.168.77.3 self permanent
link ext0 veth mtu 1500 up
link weft.1 vxlan mtu 1450 up
neigh 10.5.2.0 dev weft.1 lladdr 02:00:00:00:00:02 PERMANENT
neigh 10.5.3.0 dev weft.1 lladdr 02:00:00:00:00:03 PERMANENT
nexthop id 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
nexthop id 168100608 via 10.5.3.0 dev weft.1 proto 87 onlink
route 10.5.2.0/24 nhid 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
route 10.5.3.0/24 nhid 168100608 via 10.5.3.0 dev weft.1 proto 87 onlink
`
	if got := k.State(); got != want {
		t.Fatalf("after the first apply:\n%s\nwant:\n%s", got, want)
	}
	writes := k.Writes()
	apply(two)
	if k.Writes() != writes {
		t.Errorf("an apply with nothing to change wrote %d times", k.Writes()-writes)
	}
	// Dumps the kernel interrupts part way (the neighbour and the FDB
	// dump, once each) are read again, not compared half read: nothing to
	// write either.
	k.InterruptDumps = 2
	apply(two)
	if k.Writes() != writes || k.InterruptDumps != 0 {
		t.Errorf("an apply over interrupted dumps wrote %d times (%d interruptions left)", k.Writes()-writes, k.InterruptDumps)
	}

	// A delta (peer 2's MAC changed, 3 left, 5 came) leaves exactly what a
	// whole apply of the new state leaves.
	newTwo := vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:22"}`)
	five := vxPeer("10.5.5.0/24", "192.168.77.5", `{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}`)
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self, Old: two.Peers, New: []mesh.Peer{newTwo, five}}); err != nil {
		t.Fatal(err)
	}
	afterDelta := k.State()
	apply(mesh.Desired{Self: self, Peers: []mesh.Peer{newTwo, five}})
	if whole := k.State(); whole != afterDelta {
		t.Errorf("a whole apply after the delta changed the state:\n%s\nvs\n%s", whole, afterDelta)
	}

	// The device deleted by hand: a delta recreates it and asks for a whole
	// apply, which restores everything.
	dev, _ := k.LinkByName("weft.1")
	k.LinkDel(dev)
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self}); err != mesh.ErrWholeApply {
		t.Fatalf("a delta on a recreated device: %v, want ErrWholeApply", err)
	}
	apply(two)
	if got := k.State(); got != want {
		t.Errorf("after the device was recreated:\n%s\nwant:\n%s", got, want)
	}
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := k.State(); got != "addr 192.168.77.1/24 dev ext0\nlink ext0 veth mtu 1500 up\n" {
		t.Errorf("after cleanup:\n%s", got)
	}
}

// TestNexthopsOnFakeKernel: the IPv4 peer routes go through a nexthop
// object each, whose ID is the gateway's address; routes laid out before
// (each carrying its gateway, as weft did and flanneld does) move to
// them; an object changed or deleted by hand is put right by the next
// whole apply; an ID another program holds is left to it, that peer's
// route carrying its gateway; and a kernel without nexthop objects gets
// routes with gateways.
func TestNexthopsOnFakeKernel(t *testing.T) {
	setup := func(t *testing.T, k *netkerneltest.Kernel) (*Backend, mesh.Desired) {
		t.Helper()
		ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
		b, err := New(json.RawMessage(`{"Type":"vxlan"}`), ext, ext.Addr, k, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		return b, mesh.Desired{Self: lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}, Peers: []mesh.Peer{
			vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`),
			vxPeer("10.5.3.0/24", "192.168.77.3", `{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}`),
		}}
	}
	routes := func(k *netkerneltest.Kernel) string {
		var out []string
		for _, line := range strings.Split(k.State(), "\n") {
			if strings.HasPrefix(line, "route ") || strings.HasPrefix(line, "nexthop ") {
				out = append(out, line)
			}
		}
		return strings.Join(out, "\n")
	}
	const viaNexthops = `nexthop id 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
nexthop id 168100608 via 10.5.3.0 dev weft.1 proto 87 onlink
route 10.5.2.0/24 nhid 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
route 10.5.3.0/24 nhid 168100608 via 10.5.3.0 dev weft.1 proto 87 onlink`
	ctx := context.Background()

	t.Run("routes with gateways move to nexthop objects", func(t *testing.T) {
		k := netkerneltest.NewKernel()
		b, d := setup(t, k)
		dev, _ := k.LinkByName("weft.1")
		for _, p := range []string{"10.5.2.0", "10.5.3.0"} {
			gw := netip.MustParseAddr(p)
			r := netkernel.PeerRoute(dev.Attrs().Index, -1, underlay.Route{Dst: netip.PrefixFrom(gw, 24), Via: gw})
			if err := k.RouteReplace(&r); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
		if got := routes(k); got != viaNexthops {
			t.Errorf("after the apply:\n%s\nwant:\n%s", got, viaNexthops)
		}
	})

	t.Run("drift put right", func(t *testing.T) {
		k := netkerneltest.NewKernel()
		b, d := setup(t, k)
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
		dev, _ := k.LinkByName("weft.1")
		// One object sent elsewhere, the other deleted (its route with it).
		k.NexthopSet(netkernel.Nexthop{ID: 168100352, Link: dev.Attrs().Index, Gw: netip.MustParseAddr("10.9.9.9"), OnLink: true, Protocol: 87}, true)
		k.NexthopDel(168100608)
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
		if got := routes(k); got != viaNexthops {
			t.Errorf("after drift and a whole apply:\n%s\nwant:\n%s", got, viaNexthops)
		}
		writes := k.Writes()
		if err := b.Apply(ctx, d); err != nil || k.Writes() != writes {
			t.Errorf("an apply with nothing to change wrote %d times (%v)", k.Writes()-writes, err)
		}
		// A peer gone takes its object along.
		if err := b.Apply(ctx, mesh.Desired{Self: d.Self, Peers: d.Peers[:1]}); err != nil {
			t.Fatal(err)
		}
		if got := routes(k); strings.Contains(got, "10.5.3.0") {
			t.Errorf("the route or object of a peer gone remains:\n%s", got)
		}
	})

	t.Run("an ID another program holds", func(t *testing.T) {
		k := netkerneltest.NewKernel()
		b, d := setup(t, k)
		ext, _ := k.LinkByName("ext0")
		foreign := netkernel.Nexthop{ID: 168100352, Link: ext.Attrs().Index, Gw: netip.MustParseAddr("192.168.77.254"), Protocol: 186}
		if err := k.NexthopSet(foreign, false); err != nil {
			t.Fatal(err)
		}
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
		got := routes(k)
		for _, want := range []string{
			"nexthop id 168100352 via 192.168.77.254 dev ext0 proto 186",
			"route 10.5.2.0/24 via 10.5.2.0 dev weft.1 proto 87 onlink",
			"route 10.5.3.0/24 nhid 168100608 via 10.5.3.0 dev weft.1 proto 87 onlink",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("lacks %q:\n%s", want, got)
			}
		}
		// A delta that removes the peer leaves the other program's object.
		if err := b.ApplyDelta(ctx, mesh.Delta{Self: d.Self, Old: d.Peers[:1]}); err != nil {
			t.Fatal(err)
		}
		if got := routes(k); !strings.Contains(got, "nexthop id 168100352 via 192.168.77.254") || strings.Contains(got, "10.5.2.0/24") {
			t.Errorf("after a delta removing the peer:\n%s", got)
		}
	})

	t.Run("a kernel without nexthop objects", func(t *testing.T) {
		k := netkerneltest.NewKernel()
		k.NoNexthops = true
		b, d := setup(t, k)
		for range 2 {
			if err := b.Apply(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.ApplyDelta(ctx, mesh.Delta{Self: d.Self, New: []mesh.Peer{vxPeer("10.5.4.0/24", "192.168.77.4", `{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}`)}}); err != nil {
			t.Fatal(err)
		}
		want := `route 10.5.2.0/24 via 10.5.2.0 dev weft.1 proto 87 onlink
route 10.5.3.0/24 via 10.5.3.0 dev weft.1 proto 87 onlink
route 10.5.4.0/24 via 10.5.4.0 dev weft.1 proto 87 onlink`
		if got := routes(k); got != want {
			t.Errorf("routes:\n%s\nwant:\n%s", got, want)
		}
	})
}
