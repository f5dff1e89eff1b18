//go:build netns

package backends

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/mesh"
)

// TestFilterPutBackAfterFlushInNetns: on a real kernel, `nft flush
// ruleset` takes the tunnel source filter; the check weftd runs every
// -iptables-resync (KeepFilterEvery, here every 300 ms) puts it back
// with its peers within one interval, and VXLAN from an address that holds
// no lease is dropped again and counted.
func TestFilterPutBackAfterFlushInNetns(t *testing.T) {
	host, other := netkerneltest.NewLinkedNetns(t)
	host.Enter(t)
	// A lasting connection: its socket is made here, in the host's
	// namespace, so the keeper's goroutine (on another thread) writes there.
	conn, err := nftables.New(nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseLasting() })
	filter := tunnelfilter.New(conn, tunnelfilter.Tunnel{VXLANPort: 8472})
	if err := filter.Ensure(); err != nil {
		t.Fatal(err)
	}
	b := FilterSources(nopDeltaBackend{}, filter)
	peer := mesh.Peer{Key: "10.5.9.0-24", PublicIP: netip.MustParseAddr("192.168.77.9")}
	if err := b.Apply(context.Background(), mesh.Desired{Peers: []mesh.Peer{peer}}); err != nil {
		t.Fatal(err)
	}
	keeper, _ := As[FilterKeeper](b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- KeepFilterEvery(ctx, keeper, 300*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); <-done }()

	host.Run(t, "nft", "flush", "ruleset")
	flushed := time.Now()
	var list string
	for {
		list, _ = host.Try("nft", "list", "table", "inet", tunnelfilter.TableName)
		if strings.Contains(list, "192.168.77.9") && strings.Contains(list, "udp dport 8472 ip saddr != @peers4 counter") {
			break
		}
		if time.Since(flushed) > 2*time.Second {
			t.Fatalf("the filter is not back 2s after nft flush ruleset (checked every 300ms):\n%s", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("put back %s after the flush", time.Since(flushed).Round(time.Millisecond))
	if !keeper.FilterInPlace() {
		t.Error("FilterInPlace is false once the filter is back")
	}
	other.Run(t, "bash", "-c", "echo forged > /dev/udp/192.168.77.1/8472")
	drops, err := filter.Drops()
	if err != nil || drops[netip.MustParseAddr("192.168.77.2")] != 1 {
		t.Errorf("VXLAN from a source that holds no lease, after the filter came back: drops %v, %v; want 1 from 192.168.77.2", drops, err)
	}
}
