package vxlan

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
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
route 10.5.2.0/24 via 10.5.2.0 dev weft.1 proto 87 onlink
route 10.5.3.0/24 via 10.5.3.0 dev weft.1 proto 87 onlink
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
