//go:build netns

package hostgw

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/mesh"
)

// TestApplyInNetns runs Apply against the kernel in a private namespace.
func TestApplyInNetns(t *testing.T) {
	ns := netkerneltest.NewNetns(t)
	ns.Run(t, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p")
	ns.Run(t, "ip", "link", "set", "ext0p", "up")
	ns.Run(t, "ip", "addr", "add", "192.168.77.1/24", "dev", "ext0")
	ns.Run(t, "ip", "link", "set", "ext0", "up")
	// A route that is not weft's must survive everything below.
	ns.Run(t, "ip", "route", "add", "10.5.99.0/24", "via", "192.168.77.99")
	link, err := ns.Handle.LinkByName("ext0")
	if err != nil {
		t.Fatal(err)
	}
	e := ext
	e.Index, e.MTU = link.Attrs().Index, link.Attrs().MTU
	b := New(e, ns.Kernel(t), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	routes := func() string { return ns.Run(t, "ip", "-4", "route", "show", "proto", "87") }

	two := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.2"), peer("10.5.3.0/24", "192.168.77.3")}}
	if err := b.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	want := "10.5.2.0/24 via 192.168.77.2 dev ext0 \n10.5.3.0/24 via 192.168.77.3 dev ext0 \n"
	if got := routes(); got != want {
		t.Fatalf("routes:\n%s\nwant:\n%s", got, want)
	}
	// Drift: a route deleted by hand comes back on the next apply.
	ns.Run(t, "ip", "route", "del", "10.5.3.0/24")
	if err := b.Apply(ctx, two); err != nil {
		t.Fatal(err)
	}
	if got := routes(); got != want {
		t.Fatalf("after drift repair:\n%s", got)
	}
	// A peer moved and one left: only the difference changes.
	moved := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.22")}}
	if err := b.Apply(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if got := routes(); got != "10.5.2.0/24 via 192.168.77.22 dev ext0 \n" {
		t.Fatalf("after change:\n%s", got)
	}
	// Deltas: a peer added, one moved, one removed; nothing else touched.
	ns.Run(t, "ip", "route", "add", "10.5.50.0/24", "via", "192.168.77.50", "proto", "87")
	delta := mesh.Delta{Old: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.22")},
		New: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.2"), peer("10.5.5.0/24", "192.168.77.5")}}
	if err := b.ApplyDelta(ctx, delta); err != nil {
		t.Fatal(err)
	}
	want = "10.5.2.0/24 via 192.168.77.2 dev ext0 \n10.5.5.0/24 via 192.168.77.5 dev ext0 \n10.5.50.0/24 via 192.168.77.50 dev ext0 \n"
	if got := routes(); got != want {
		t.Fatalf("after a delta:\n%s\nwant:\n%s", got, want)
	}
	if err := b.ApplyDelta(ctx, mesh.Delta{Old: []mesh.Peer{peer("10.5.5.0/24", "192.168.77.5")}}); err != nil {
		t.Fatal(err)
	}
	// The stray proto-87 route is the resync's business, not a delta's.
	if got := routes(); got != "10.5.2.0/24 via 192.168.77.2 dev ext0 \n10.5.50.0/24 via 192.168.77.50 dev ext0 \n" {
		t.Fatalf("after a removal delta:\n%s", got)
	}
	// An unreachable peer is reported by name, the others still applied.
	bad := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.22"), peer("10.5.4.0/24", "10.200.0.4")}}
	if err := b.Apply(ctx, bad); err == nil || !strings.Contains(err.Error(), "peer 10.5.4.0-24") {
		t.Fatalf("Apply with off-link peer = %v", err)
	}
	if got := routes(); got != "10.5.2.0/24 via 192.168.77.22 dev ext0 \n" {
		t.Fatalf("good peer lost (and the stray route kept):\n%s", got)
	}
	// Cleanup removes ours only.
	if err := b.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := routes(); got != "" {
		t.Fatalf("after cleanup:\n%s", got)
	}
	if !strings.Contains(ns.Run(t, "ip", "route"), "10.5.99.0/24 via 192.168.77.99") {
		t.Fatal("cleanup removed a route weft does not own")
	}
}
