//go:build netns

package vxlan

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestApplyInNetns drives the backend against the kernel in a private
// namespace and reads the result back with ip and bridge.
func TestApplyInNetns(t *testing.T) {
	ns := netkerneltest.NewNetns(t)
	ns.Run(t, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p")
	ns.Run(t, "ip", "addr", "add", "192.168.77.1/24", "dev", "ext0")
	ns.Run(t, "ip", "link", "set", "ext0", "up")
	ns.Run(t, "ip", "link", "set", "ext0p", "up")
	link, err := ns.Handle.LinkByName("ext0")
	if err != nil {
		t.Fatal(err)
	}
	ext := testExt
	ext.Index, ext.MTU, ext.Addr = link.Attrs().Index, link.Attrs().MTU, netip.MustParseAddr("192.168.77.1")
	b, err := New(json.RawMessage(`{"Type":"vxlan"}`), ext, ext.Addr, ns.Kernel(t), slog.New(slog.NewTextHandler(io.Discard, nil)))
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
	// show lists the kernel state sorted: the kernel's own order of
	// neighbours and FDB entries changes when the device is recreated.
	show := func() string {
		lines := strings.Split(ns.Run(t, "ip", "-4", "route", "show", "proto", "87")+
			ns.Run(t, "ip", "neigh", "show", "dev", "weft.1")+
			ns.Run(t, "bridge", "fdb", "show", "dev", "weft.1")+
			ns.Run(t, "ip", "nexthop", "show", "proto", "87")+
			ns.Run(t, "ip", "-4", "-br", "addr", "show", "dev", "weft.1"), "\n")
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	apply := func(d mesh.Desired) {
		t.Helper()
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	apply(two)
	got := show()
	for _, want := range []string{
		"10.5.2.0/24 nhid 168100352 via 10.5.2.0 dev weft.1 onlink", "10.5.3.0/24 nhid 168100608 via 10.5.3.0 dev weft.1 onlink",
		"id 168100352 via 10.5.2.0 dev weft.1 scope link proto 87 onlink",
		"10.5.2.0 lladdr 02:00:00:00:00:02 PERMANENT", "02:00:00:00:00:03 dst 192.168.77.3 self permanent",
		"10.5.1.0/32",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("kernel state lacks %q:\n%s", want, got)
		}
	}
	if out := ns.Run(t, "ip", "-d", "link", "show", "weft.1"); !strings.Contains(out, "vxlan id 1") || !strings.Contains(out, "dstport 8472") ||
		!strings.Contains(out, b.mac.String()) || !strings.Contains(out, "mtu 1450") {
		t.Errorf("device:\n%s", out)
	}

	// A changed plan: peer 3 left, peer 4 came. Only the difference moves;
	// peer 2's entries keep their identity (same neighbour, same route).
	three := mesh.Desired{Self: self, Peers: []mesh.Peer{two.Peers[0],
		vxPeer("10.5.4.0/24", "192.168.77.4", `{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}`)}}
	apply(three)
	got = show()
	if strings.Contains(got, "10.5.3.0") || strings.Contains(got, "02:00:00:00:00:03") {
		t.Errorf("entries of the peer that left remain:\n%s", got)
	}
	if !strings.Contains(got, "10.5.4.0/24 nhid 168100864 via 10.5.4.0") || !strings.Contains(got, "02:00:00:00:00:04 dst 192.168.77.4") ||
		!strings.Contains(got, "10.5.2.0 lladdr 02:00:00:00:00:02") {
		t.Errorf("after change:\n%s", got)
	}
	// Applying the same plan again changes nothing.
	apply(three)
	if again := show(); again != got {
		t.Errorf("a second apply changed the state:\n%s\nvs\n%s", again, got)
	}

	// A delta (peer 2's MAC changed, 4 left, 5 came) leaves exactly what a
	// whole apply of the new state leaves, and touches nothing else.
	newTwo := vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:22"}`)
	five := vxPeer("10.5.5.0/24", "192.168.77.5", `{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}`)
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self, Old: three.Peers, New: []mesh.Peer{newTwo, five}}); err != nil {
		t.Fatal(err)
	}
	afterDelta := show()
	if strings.Contains(afterDelta, "02:00:00:00:00:02") || strings.Contains(afterDelta, "10.5.4.0") ||
		!strings.Contains(afterDelta, "02:00:00:00:00:22 dst 192.168.77.2") || !strings.Contains(afterDelta, "10.5.5.0/24 nhid 168101120 via 10.5.5.0") {
		t.Errorf("after a delta:\n%s", afterDelta)
	}
	apply(mesh.Desired{Self: self, Peers: []mesh.Peer{newTwo, five}})
	if whole := show(); whole != afterDelta {
		t.Errorf("a whole apply after the delta changed the state:\n%s\nvs\n%s", whole, afterDelta)
	}
	// A delta that finds the device gone recreates it and asks for a whole apply.
	ns.Run(t, "ip", "link", "del", "weft.1")
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self, New: []mesh.Peer{vxPeer("10.5.6.0/24", "192.168.77.6", `{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}`)}}); err != mesh.ErrWholeApply {
		t.Fatalf("a delta on a recreated device: %v, want ErrWholeApply", err)
	}
	apply(three)

	// The device deleted by hand: the next apply (the resync) restores it all.
	ns.Run(t, "ip", "link", "del", "weft.1")
	apply(three)
	if restored := show(); restored != got {
		t.Errorf("after the device was deleted, state is:\n%s\nwant:\n%s", restored, got)
	}
	// A nexthop object deleted by hand (its route goes with it) and one
	// sent elsewhere: the next apply puts both right.
	ns.Run(t, "ip", "nexthop", "del", "id", "168100352")
	ns.Run(t, "ip", "nexthop", "replace", "id", "168100864", "via", "10.5.9.9", "dev", "weft.1", "onlink", "proto", "87")
	apply(three)
	if restored := show(); restored != got {
		t.Errorf("after nexthop objects were changed by hand, state is:\n%s\nwant:\n%s", restored, got)
	}
	// Changed by hand (wrong port): recreated to match.
	ns.Run(t, "ip", "link", "del", "weft.1")
	ns.Run(t, "ip", "link", "add", "weft.1", "type", "vxlan", "id", "1", "dstport", "4789", "dev", "ext0")
	apply(three)
	if out := ns.Run(t, "ip", "-d", "link", "show", "weft.1"); !strings.Contains(out, "dstport 8472") {
		t.Errorf("mismatched device not recreated:\n%s", out)
	}

	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.Try("ip", "link", "show", "weft.1"); err == nil {
		t.Error("device survived cleanup")
	}
	if out := ns.Run(t, "ip", "-4", "route", "show", "proto", "87"); out != "" {
		t.Errorf("routes survived cleanup: %s", out)
	}
	if out := ns.Run(t, "ip", "nexthop", "show", "proto", "87"); out != "" {
		t.Errorf("nexthop objects survived cleanup: %s", out)
	}
}
