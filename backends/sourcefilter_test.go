package backends

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// recordingFilter is a SourceFilter that holds its addresses in memory and
// records each call, for the wrapper's unit test (the real filter runs in
// the host tier and the lab).
type recordingFilter struct {
	addrs map[netip.Addr]bool
	calls []string
	// gone says the table was flushed under it, until the next Ensure.
	gone bool
}

func (f *recordingFilter) Ensure() error {
	f.calls = append(f.calls, "ensure")
	f.gone = false
	return nil
}
func (f *recordingFilter) InPlace() bool { return !f.gone }
func (f *recordingFilter) Sync(want []netip.Addr) error {
	f.addrs = map[netip.Addr]bool{}
	for _, a := range want {
		f.addrs[a] = true
	}
	f.calls = append(f.calls, fmt.Sprintf("sync %d", len(want)))
	return nil
}
func (f *recordingFilter) Update(add, remove []netip.Addr) error {
	for _, a := range add {
		f.addrs[a] = true
	}
	for _, a := range remove {
		delete(f.addrs, a)
	}
	f.calls = append(f.calls, fmt.Sprintf("update +%v -%v", add, remove))
	return nil
}
func (f *recordingFilter) Drops() (map[netip.Addr]uint64, error) { return nil, nil }
func (f *recordingFilter) Remove() error                         { return nil }

// nopDeltaBackend is a backend that accepts every state and delta.
type nopDeltaBackend struct{ Backend }

func (nopDeltaBackend) Apply(context.Context, mesh.Desired) error    { return nil }
func (nopDeltaBackend) ApplyDelta(context.Context, mesh.Delta) error { return nil }

// dualNop is a DualStack backend publishing IPv6 data.
type dualNop struct{ nopDeltaBackend }

func (dualNop) BackendV6Data() json.RawMessage { return json.RawMessage(`{"VNI":1}`) }

// TestFilterSourcesKeepsCapabilities: a dual-stack backend's IPv6 half's
// data is found through its wrapper (without it, peers skip that half).
func TestFilterSourcesKeepsCapabilities(t *testing.T) {
	if _, ok := As[DualStack](FilterSources(nopDeltaBackend{}, &recordingFilter{})); ok {
		t.Error("a single-family backend's wrapper claims an IPv6 half")
	}
	dual, ok := As[DualStack](FilterSources(dualNop{}, &recordingFilter{}))
	if !ok || string(dual.BackendV6Data()) != `{"VNI":1}` {
		t.Errorf("a dual-stack backend's wrapper lost BackendV6Data (%v)", ok)
	}
}

// TestFilterSources: the filter holds exactly the peers' PublicIP and
// PublicIPv6 after a whole apply (one Sync); a delta adds its new peers'
// addresses at once, and an address no peer names any more (an address
// two leases named leaves with the last) goes at the next whole apply.
func TestFilterSources(t *testing.T) {
	f := &recordingFilter{}
	b := FilterSources(nopDeltaBackend{}, f).(*sourceFiltered)
	peer := func(key, ip, ip6 string) mesh.Peer {
		p := mesh.Peer{Key: key, PublicIP: netip.MustParseAddr(ip)}
		if ip6 != "" {
			p = p.WithIPv6(netip.Prefix{}, netip.MustParseAddr(ip6), nil)
		}
		return p
	}
	a, b2, old := peer("a", "192.0.2.1", "2001:db8::1"), peer("b", "192.0.2.2", ""), peer("old", "192.0.2.2", "")
	state := []mesh.Peer{a, b2, old}
	if err := b.Apply(context.Background(), mesh.Desired{Peers: state, Self: lease.Lease{}}); err != nil {
		t.Fatal(err)
	}
	have := func() []string {
		var out []string
		for addr := range f.addrs {
			out = append(out, addr.String())
		}
		slices.Sort(out)
		return out
	}
	if got := fmt.Sprint(have()); got != "[192.0.2.1 192.0.2.2 2001:db8::1]" {
		t.Errorf("after a whole apply: %s", got)
	}
	// The old lease of host b goes; host a moves; c comes.
	moved, c := peer("a", "192.0.2.9", ""), peer("c", "192.0.2.3", "")
	if err := b.ApplyDelta(context.Background(), mesh.Delta{Old: []mesh.Peer{old, a}, New: []mesh.Peer{moved, c}}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(have()); got != "[192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.9 2001:db8::1]" {
		t.Errorf("after a move and a join: %s", got)
	}
	if want := "[sync 3 update +[192.0.2.9 192.0.2.3] -[]]"; fmt.Sprint(f.calls) != want {
		t.Errorf("calls %v, want %s", f.calls, want)
	}
	// The resync: a's old addresses go; b's, still named by its lease, stays.
	if err := b.Apply(context.Background(), mesh.Desired{Peers: []mesh.Peer{moved, b2, c}}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(have()); got != "[192.0.2.2 192.0.2.3 192.0.2.9]" {
		t.Errorf("after the resync: %s", got)
	}
	// An address that left and comes back is added again.
	if err := b.ApplyDelta(context.Background(), mesh.Delta{New: []mesh.Peer{a}}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(have()); got != "[192.0.2.1 192.0.2.2 192.0.2.3 192.0.2.9 2001:db8::1]" {
		t.Errorf("a's addresses back: %s", got)
	}
}

// TestKeepFilter: a filter flushed under the wrapper (nft flush ruleset)
// is put back at the next check with every address its peers use, those
// of the last whole apply and of the deltas since; an address no peer uses
// any more is left out. A filter in place is only looked at.
func TestKeepFilter(t *testing.T) {
	f := &recordingFilter{}
	b := FilterSources(nopDeltaBackend{}, f)
	keeper, ok := As[FilterKeeper](b)
	if !ok {
		t.Fatal("a source-filtered backend is no FilterKeeper")
	}
	peer := func(key, ip string) mesh.Peer {
		return mesh.Peer{Key: key, PublicIP: netip.MustParseAddr(ip)}
	}
	ctx := context.Background()
	if err := b.Apply(ctx, mesh.Desired{Peers: []mesh.Peer{peer("a", "192.168.77.2"), peer("b", "192.168.77.3")}}); err != nil {
		t.Fatal(err)
	}
	da := b.(mesh.DeltaApplier)
	if err := da.ApplyDelta(ctx, mesh.Delta{Old: []mesh.Peer{peer("b", "192.168.77.3")}, New: []mesh.Peer{peer("c", "192.168.77.4")}}); err != nil {
		t.Fatal(err)
	}
	f.calls = nil
	if restored, err := keeper.KeepFilter(); restored || err != nil || len(f.calls) != 0 || !keeper.FilterInPlace() {
		t.Errorf("a filter in place: restored %v, %v, calls %v", restored, err, f.calls)
	}
	f.gone, f.addrs = true, map[netip.Addr]bool{}
	restored, err := keeper.KeepFilter()
	if !restored || err != nil || !keeper.FilterInPlace() {
		t.Fatalf("a flushed filter: restored %v, %v", restored, err)
	}
	want := map[netip.Addr]bool{netip.MustParseAddr("192.168.77.2"): true, netip.MustParseAddr("192.168.77.4"): true}
	if !maps.Equal(f.addrs, want) || f.calls[0] != "ensure" {
		t.Errorf("put back with %v (calls %v), want %v after an ensure", f.addrs, f.calls, want)
	}
}
