package ipip

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

func ipipPeer(subnet, ip string) mesh.Peer {
	p := netip.MustParsePrefix(subnet)
	return mesh.Peer{Key: strings.ReplaceAll(p.String(), "/", "-"), Subnet: p, PublicIP: netip.MustParseAddr(ip), BackendType: "ipip"}
}

// TestApplyOnFakeKernel checks the whole kernel state the backend leaves,
// as golden text: the device (external MTU less 20, the subnet's network
// address /32), a route per peer via its PublicIP onlink, DirectRouting,
// a delta, a device deleted by hand, cleanup. The lab's TestIPIPCluster
// runs the same against Debian's kernel in the VM tier.
func TestApplyOnFakeKernel(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := New(json.RawMessage(`{"Type":"ipip"}`), ext, k, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}
	two := mesh.Desired{Self: self, Peers: []mesh.Peer{ipipPeer("10.5.2.0/24", "192.168.77.2"), ipipPeer("10.5.3.0/24", "10.9.0.3")}}
	apply := func(b *Backend, d mesh.Desired) {
		t.Helper()
		if err := b.Apply(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	apply(b, two)
	want := `addr 10.5.1.0/32 dev weft.ipip
addr 192.168.77.1/24 dev ext0
link ext0 veth mtu 1500 up
link weft.ipip ipip mtu 1480 up
route 10.5.2.0/24 via 192.168.77.2 dev weft.ipip proto 87 onlink
route 10.5.3.0/24 via 10.9.0.3 dev weft.ipip proto 87 onlink
`
	if got := k.State(); got != want {
		t.Fatalf("after the first apply:\n%s\nwant:\n%s", got, want)
	}
	if b.MTU() != 1480 || b.BackendData() != nil {
		t.Errorf("MTU %d, BackendData %s", b.MTU(), b.BackendData())
	}
	writes := k.Writes()
	apply(b, two)
	if k.Writes() != writes {
		t.Errorf("an apply with nothing to change wrote %d times", k.Writes()-writes)
	}

	// A delta (3 left, 5 came) leaves what a whole apply leaves.
	five := ipipPeer("10.5.5.0/24", "192.168.77.5")
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self, Old: two.Peers[1:], New: []mesh.Peer{five}}); err != nil {
		t.Fatal(err)
	}
	afterDelta := k.State()
	apply(b, mesh.Desired{Self: self, Peers: []mesh.Peer{two.Peers[0], five}})
	if whole := k.State(); whole != afterDelta || !strings.Contains(whole, "route 10.5.5.0/24 via 192.168.77.5 dev weft.ipip") || strings.Contains(whole, "10.5.3.0") {
		t.Errorf("delta then whole apply:\n%s\nvs\n%s", whole, afterDelta)
	}

	// The device deleted by hand: a delta recreates it and asks for a whole
	// apply, which restores everything.
	dev, _ := k.LinkByName(DeviceName)
	k.LinkDel(dev)
	if err := b.ApplyDelta(ctx, mesh.Delta{Self: self}); err != mesh.ErrWholeApply {
		t.Fatalf("a delta on a recreated device: %v, want ErrWholeApply", err)
	}
	apply(b, two)
	if got := k.State(); got != want {
		t.Errorf("after the device was recreated:\n%s\nwant:\n%s", got, want)
	}

	// DirectRouting: the peer on ext0's network gets a plain route, the
	// other stays in the tunnel.
	direct, err := New(json.RawMessage(`{"Type":"ipip","DirectRouting":true}`), ext, k, log)
	if err != nil {
		t.Fatal(err)
	}
	apply(direct, two)
	if got := k.State(); !strings.Contains(got, "route 10.5.2.0/24 via 192.168.77.2 dev ext0 proto 87\n") ||
		!strings.Contains(got, "route 10.5.3.0/24 via 10.9.0.3 dev weft.ipip proto 87 onlink\n") || strings.Count(got, "route ") != 2 {
		t.Errorf("DirectRouting:\n%s", got)
	}
	if err := direct.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := k.State(); got != "addr 192.168.77.1/24 dev ext0\nlink ext0 veth mtu 1500 up\n" {
		t.Errorf("after cleanup:\n%s", got)
	}
}

func TestNewRefuses(t *testing.T) {
	k := netkerneltest.NewKernel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	small := k.AddExternal("ext0", netip.MustParsePrefix("192.168.77.1/24"), 590)
	if _, err := New(nil, small, k, log); err == nil || !strings.Contains(err.Error(), "too small for ipip") {
		t.Errorf("MTU 590: %v", err)
	}
	if _, err := ParseOptions(json.RawMessage(`{"DirectRouting":"yes"}`)); err == nil || !strings.Contains(err.Error(), "ipip Backend options") {
		t.Errorf("bad DirectRouting: %v", err)
	}
}
