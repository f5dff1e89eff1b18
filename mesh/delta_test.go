package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

// deltaApplier keeps the peers it was given, by lease key, from whole
// states and deltas alike, and checks that every delta's Old matches what
// it holds: a delta built on a wrong idea of the data path is an error.
type deltaApplier struct {
	mu     sync.Mutex
	peers  map[string]Peer
	whole  int
	deltas int
	bad    []string
}

func (a *deltaApplier) Apply(_ context.Context, d Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.whole++
	a.peers = map[string]Peer{}
	for _, p := range d.Peers {
		a.peers[p.Key] = p
	}
	return nil
}

func (a *deltaApplier) ApplyDelta(_ context.Context, d Delta) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.deltas++
	for _, p := range d.Old {
		if have, ok := a.peers[p.Key]; !ok || !samePeer(have, p) {
			a.bad = append(a.bad, fmt.Sprintf("delta removes %s %s, applier holds %v", p.Key, p.PublicIP, have.PublicIP))
		}
		delete(a.peers, p.Key)
	}
	for _, p := range d.New {
		if _, ok := a.peers[p.Key]; ok {
			a.bad = append(a.bad, "delta adds "+p.Key+" twice")
		}
		a.peers[p.Key] = p
	}
	return nil
}

func (a *deltaApplier) render() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	d := Desired{}
	for _, p := range a.peers {
		d.Peers = append(d.Peers, p)
	}
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].Subnet.Addr().Less(d.Peers[j].Subnet.Addr()) })
	return render(d)
}

// Random lease churn applied as deltas ends in exactly the state Compute
// derives from the whole lease set, with one whole apply (the first).
func TestNodeDeltasMatchCompute(t *testing.T) {
	cfg := testConfig(t)
	app := &deltaApplier{}
	tn := startNode(t, cfg, app, time.Hour, slog.New(slog.DiscardHandler))
	defer tn.stop()
	store, watcher, holder, reconciler, ctx := tn.store, tn.watcher, tn.holder, tn.reconciler, context.Background()
	waitUntil(t, func() bool { return reconciler.Stats().Runs > 0 })

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 400 {
		key := fmt.Sprintf("10.5.%d.0-24", 100+rng.IntN(40))
		if key == tn.self.Key() {
			continue // rewriting our own lease is the holder's test, and a whole apply
		}
		switch op := rng.IntN(6); op {
		case 0, 1:
			store.PutRaw(key, []byte(fmt.Sprintf(`{"PublicIP":"192.168.60.%d","PublicIPv6":null,"BackendType":"host-gw"}`, 1+rng.IntN(3))))
		case 2:
			store.PutRaw(key, []byte(`{"PublicIP":"192.168.60.9","PublicIPv6":null,"BackendType":"vxlan"}`)) // skipped
		case 3:
			store.PutRaw(key, []byte(`{"PublicIP":"192.168.50.1","PublicIPv6":null,"BackendType":"host-gw"}`)) // our address: skipped
		case 4:
			store.PutRaw(key, []byte(`{"PublicIP":`)) // garbage: not a lease
		default:
			store.Delete(ctx, key)
		}
		if i%50 == 0 {
			time.Sleep(5 * time.Millisecond) // let some changes land one by one
		}
	}
	want := func() string { return render(Desired{Peers: Compute(holder.Current(), watcher.Leases(), cfg).Peers}) }
	wantSkipped := func() string {
		return render(Desired{Skipped: Compute(holder.Current(), watcher.Leases(), cfg).Skipped})
	}
	waitUntil(t, func() bool {
		return app.render() == want() && render(Desired{Skipped: reconciler.Desired().Skipped}) == wantSkipped()
	})
	app.mu.Lock()
	defer app.mu.Unlock()
	if len(app.bad) > 0 {
		t.Errorf("inconsistent deltas: %v", app.bad[:min(5, len(app.bad))])
	}
	if app.whole != 1 || app.deltas == 0 {
		t.Errorf("%d whole applies and %d deltas; want 1 and some", app.whole, app.deltas)
	}
	if st := reconciler.Stats(); st.Peers != len(app.peers) || st.WholeApplies != 1 {
		t.Errorf("stats: %+v, applier holds %d peers", st, len(app.peers))
	}
}

// skippingApplier applies everything but skips one peer, as a backend's
// plan does with BackendData it cannot use.
type skippingApplier struct{ key string }

func (a skippingApplier) Apply(_ context.Context, d Desired) error {
	for _, p := range d.Peers {
		if p.Key == a.key {
			return errors.Join(SkipPeer(p.Key, "VtepMAC 00:00:00:00:00:00 is not a unicast MAC"))
		}
	}
	return nil
}

// TestBackendSkipsDoNotBlockReady: a peer the backend skips is no failure:
// the apply counts as done (readiness), the skip is logged once across
// resyncs, and status lists the peer as skipped with the backend's reason.
func TestBackendSkipsDoNotBlockReady(t *testing.T) {
	var logs lockedBuf
	tn := startNode(t, testConfig(t), skippingApplier{key: "10.5.7.0-24"}, 50*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	defer tn.stop()
	tn.store.PutRaw("10.5.7.0-24", []byte(`{"PublicIP":"192.168.50.7","PublicIPv6":null,"BackendType":"host-gw"}`))
	waitUntil(t, func() bool {
		d := tn.reconciler.Desired()
		return len(d.Skipped) == 1 && tn.reconciler.Stats().Runs > 5
	})
	if n := strings.Count(logs.String(), "key=10.5.7.0-24"); n != 1 {
		t.Errorf("%d warnings for the skipped peer, want 1:\n%s", n, logs.String())
	}
	d := tn.reconciler.Desired()
	if len(d.Peers) != 0 || len(d.Skipped) != 1 || !strings.Contains(d.Skipped[0].Reason, "not a unicast MAC") {
		t.Errorf("desired %+v", d)
	}
	// What /metrics counts without building the Desired.
	n := 0
	if skipped := tn.reconciler.EachPeer(func(*Peer) { n++ }); n != 0 || skipped != 1 {
		t.Errorf("EachPeer: %d peers and %d skipped, want the one lease skipped by the backend", n, skipped)
	}
	if o := tn.reconciler.Outline(); !slices.Equal(o.Skipped, d.Skipped) || len(o.Peers) != 0 {
		t.Errorf("Outline skips %v, Desired %v", o.Skipped, d.Skipped)
	}
	if st := tn.reconciler.Stats(); st.Errors != 0 || st.LastError != "" {
		t.Errorf("a skipped peer counted as an error: %+v", st)
	}
}

// TestChangedPeers: a whole apply reports the peers that left or changed
// (gone) and those that came or changed (added), not the unchanged ones.
func TestChangedPeers(t *testing.T) {
	p := func(subnet, ip string) Peer {
		s := netip.MustParsePrefix(subnet)
		return Peer{Key: lease.SubnetKey(s), Subnet: s, PublicIP: netip.MustParseAddr(ip)}
	}
	stay, leave, move, moved, come := p("10.5.2.0/24", "192.168.50.2"), p("10.5.3.0/24", "192.168.50.3"),
		p("10.5.4.0/24", "192.168.50.4"), p("10.5.4.0/24", "192.168.50.44"), p("10.5.5.0/24", "192.168.50.5")
	old := newModel(Desired{Peers: []Peer{stay, leave, move}})
	next := Desired{Peers: []Peer{stay, moved, come}}
	gone, added := changedPeers(old, newModel(next))
	keys := func(ps []Peer) string {
		var out []string
		for _, p := range ps {
			out = append(out, p.PublicIP.String())
		}
		slices.Sort(out)
		return strings.Join(out, " ")
	}
	if keys(gone) != "192.168.50.3 192.168.50.4" || keys(added) != "192.168.50.44 192.168.50.5" {
		t.Errorf("gone %s, added %s", keys(gone), keys(added))
	}
	if gone, added := changedPeers(nil, newModel(next)); len(gone) != 0 || len(added) != 3 {
		t.Errorf("from nothing: gone %v, added %v", gone, added)
	}
}
