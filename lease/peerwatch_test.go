package lease_test

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
)

// TestOutsidePeersFollowTheStore: the outside-peer watcher, on the
// in-memory store: a record that does not decode is named in one warning,
// a peer added reaches the reconciler (Changed) and Peers, one removed
// leaves.
func TestOutsidePeersFollowTheStore(t *testing.T) {
	store := leasetest.New(nil)
	var logs syncBuffer
	o := lease.NewPeerWatcher(store, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx)
	store.PutPeerRaw("phone", []byte(`{"PublicKey":"x","Address":"10.6.0.2/32","Endpoint":"[fe80::1%eth0]:51820"}`))
	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s; log:\n%s", what, logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("no warning naming the bad record", func() bool { return strings.Contains(logs.String(), "peer phone") })
	peer := lease.OutsidePeer{Name: "laptop", PublicKey: "mNxmpXEjXMZu8+uc4tM9f9lBnKNWhR3pvCNkNvk1qhM=", Address: netip.MustParsePrefix("10.6.0.1/32")}
	if err := store.AddPeer(ctx, peer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.Changed():
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled for an added peer")
	}
	if got := o.Peers(); len(got) != 1 || got[0].Name != "laptop" {
		t.Errorf("peers %+v", got)
	}
	store.RemovePeer(ctx, "laptop")
	wait("the removed peer stays", func() bool { return len(o.Peers()) == 0 })
	if n := strings.Count(logs.String(), "skipping outside peers that do not decode"); n != 1 {
		t.Errorf("%d warnings for one bad record:\n%s", n, logs.String())
	}
}
