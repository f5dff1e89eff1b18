//go:build netns

package wireguard

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestDeviceApplyAndDeltaInNetns drives a real wireguard-go device (userspace, in a
// private namespace, under a run-unique name) through whole applies and
// deltas, reading the device back with `wg show dump`: a delta must leave
// exactly what a whole apply of the same state leaves.
func TestDeviceApplyAndDeltaInNetns(t *testing.T) {
	ns := netkerneltest.NewNetns(t)
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("wg (wireguard-tools) not installed; make test installs it")
	}
	ns.Enter(t)
	// wireguard-go makes /var/run/wireguard for its UAPI socket; remove it
	// again if this test was the one that made it.
	if _, err := os.Stat("/var/run/wireguard"); err != nil {
		t.Cleanup(func() { os.Remove("/var/run/wireguard") })
	}
	name := netkerneltest.UniqueName("wgt")
	ext := underlay.ExternalInterface{Name: "lo", MTU: 1500}
	port := 40000 + int(name[3])%20*100 // any free port inside a fresh namespace works
	b, err := New(json.RawMessage(fmt.Sprintf(`{"Type":"wireguard","Implementation":"userspace","ListenPort":%d}`, port)),
		ext, filepath.Join(t.TempDir(), "key"), netkernel.NewNetlink(nil), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	b.link.name = name
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.Cleanup(ctx); err != nil {
			t.Error(err)
		}
	}()
	dump := func() string {
		out, err := exec.Command("wg", "show", name, "dump").CombinedOutput()
		if err != nil {
			t.Fatalf("wg show: %v: %s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")[1:] // peers only
		for i, l := range lines {
			f := strings.Split(l, "\t")
			lines[i] = strings.Join([]string{f[0], f[2], f[3], f[7]}, " ") // key endpoint allowed-ips keepalive
		}
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	k := []string{mustKeyString(t), mustKeyString(t), mustKeyString(t), mustKeyString(t)}
	p := func(i int, ip string, key string) mesh.Peer {
		return wgPeer(fmt.Sprintf("10.5.%d.0/24", i), ip, fmt.Sprintf(`{"PublicKey":%q,"Port":51820}`, key))
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}
	network := netip.MustParsePrefix("10.5.0.0/16")
	two := []mesh.Peer{p(2, "192.168.77.2", k[0]), p(3, "192.168.77.3", k[1])}
	if err := b.Apply(ctx, mesh.Desired{Network: network, Self: self, Peers: two}); err != nil {
		t.Fatal(err)
	}
	if got := dump(); !strings.Contains(got, k[0]+" 192.168.77.2:51820 10.5.2.0/24") || strings.Count(got, "\n") != 1 {
		t.Fatalf("after a whole apply:\n%s", got)
	}
	// Peer 2 moved, 3 left, 4 came; and 5 came with the key 2 holds: a
	// duplicate key asks for a whole apply instead.
	moved, four := p(2, "192.168.77.22", k[0]), p(4, "192.168.77.4", k[2])
	if err := b.ApplyDelta(ctx, mesh.Delta{Network: network, Self: self, Old: two, New: []mesh.Peer{moved, four}}); err != nil {
		t.Fatal(err)
	}
	afterDelta := dump()
	want := []string{k[0] + " 192.168.77.22:51820 10.5.2.0/24 off", k[2] + " 192.168.77.4:51820 10.5.4.0/24 off"}
	sort.Strings(want)
	if afterDelta != strings.Join(want, "\n") {
		t.Fatalf("after a delta:\n%s\nwant:\n%s", afterDelta, strings.Join(want, "\n"))
	}
	whole := mesh.Desired{Network: network, Self: self, Peers: []mesh.Peer{moved, four}}
	if err := b.Apply(ctx, whole); err != nil {
		t.Fatal(err)
	}
	if got := dump(); got != afterDelta {
		t.Fatalf("a whole apply after the delta changed the device:\n%s\nvs\n%s", got, afterDelta)
	}
	if err := b.ApplyDelta(ctx, mesh.Delta{Network: network, Self: self, New: []mesh.Peer{p(5, "192.168.77.5", k[0])}}); err != mesh.ErrWholeApply {
		t.Fatalf("a delta bringing a second lease with one key: %v, want ErrWholeApply", err)
	}
	// A rotated key makes the device untrusted until a whole apply.
	if _, err := b.ReloadKey(true); err != nil {
		t.Fatal(err)
	}
	if err := b.ApplyDelta(ctx, mesh.Delta{Network: network, Self: self, New: []mesh.Peer{p(6, "192.168.77.6", k[3])}}); err != mesh.ErrWholeApply {
		t.Fatalf("a delta after a key rotation: %v, want ErrWholeApply", err)
	}
}

func mustKeyString(t *testing.T) string { return mustKey(t).String() }
