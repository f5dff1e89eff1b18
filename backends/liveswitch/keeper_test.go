package liveswitch

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
	"github.com/weftnet/weft/mesh"
)

// fakeLoop stands in for the reconciler, the lease watcher and the lease
// holder around a Keeper: it records the preferences and the lease
// attributes the Keeper sets, and serves the leases a test puts in.
type fakeLoop struct {
	mu          sync.Mutex // held by Pause, as a reconcile pass holds it
	preferences []mesh.Preference
	leases      []lease.Lease
	self        lease.Lease
	// attrs have a lock of their own: the Keeper publishes inside Pause.
	attrsMu sync.Mutex
	attrs   []lease.Attrs
}

func (f *fakeLoop) Pause(fn func()) { f.mu.Lock(); defer f.mu.Unlock(); fn() }
func (f *fakeLoop) SetPreference(p mesh.Preference) {
	f.preferences = append(f.preferences, p) // called inside Pause: f.mu held
}
func (f *fakeLoop) Leases() []lease.Lease { return f.leases } // called inside Pause
func (f *fakeLoop) Current() lease.Lease  { return f.self }
func (f *fakeLoop) SetAttrs(a lease.Attrs) {
	f.attrsMu.Lock()
	defer f.attrsMu.Unlock()
	f.attrs = append(f.attrs, a)
}
func (f *fakeLoop) setLeases(l []lease.Lease) { f.mu.Lock(); f.leases = l; f.mu.Unlock() }

// last returns the latest preference and published attributes.
func (f *fakeLoop) last() (mesh.Preference, lease.Attrs, int) {
	f.mu.Lock()
	var p mesh.Preference
	if n := len(f.preferences); n > 0 {
		p = f.preferences[n-1]
	}
	f.mu.Unlock()
	f.attrsMu.Lock()
	defer f.attrsMu.Unlock()
	var a lease.Attrs
	if n := len(f.attrs); n > 0 {
		a = f.attrs[n-1]
	}
	return p, a, len(f.attrs)
}

func peerLease(subnet, ip string, typ string, also ...string) lease.Lease {
	l := lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: typ,
		BackendData: json.RawMessage(`{}`)}}
	var paths []lease.PathAttrs
	for _, a := range also {
		paths = append(paths, lease.PathAttrs{BackendType: a, BackendData: json.RawMessage(`{}`)})
	}
	if len(paths) > 0 {
		l.Attrs = l.Attrs.WithAlso(paths)
	}
	return l
}

// TestKeeperHandOver walks a switch from vxlan to wireguard on the fakes:
// nothing is published before the first apply; then the lease names
// wireguard in WeftAlso beside vxlan's BackendType; after Settle the
// preference stops putting vxlan first (peers that speak wireguard move);
// vxlan stays while a peer speaks only vxlan, and is retired (its data
// path cleaned up, the lease wireguard's alone, the state file the
// primary's alone) once no peer has needed it for the margin.
func TestKeeperHandOver(t *testing.T) {
	var calls []string
	var callsMu sync.Mutex
	wg, vx := lockedRecorder{recorder{"wireguard", &calls}, &callsMu}, lockedRecorder{recorder{"vxlan", &calls}, &callsMu}
	s := NewSwitching(backends.WireGuard, wg, []string{backends.VXLAN}, map[string]backends.Backend{backends.VXLAN: vx})
	cfg, err := backends.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	loop := &fakeLoop{self: peerLease("10.5.1.0/24", "192.168.50.1", "vxlan")}
	loop.setLeases([]lease.Lease{loop.self, peerLease("10.5.2.0/24", "192.168.50.2", "vxlan", "wireguard"),
		peerLease("10.5.3.0/24", "192.168.50.3", "vxlan")})
	plan := Plan{Legacy: []Spec{{Type: backends.VXLAN, Raw: json.RawMessage(`{"Type":"vxlan","VNI":7}`)}}, Visible: backends.VXLAN}
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	k := NewKeeper(KeeperConfig{Config: cfg, Backend: s, Plan: plan, SubnetFile: subnetFile, Reconciler: loop, Leases: loop, Own: loop,
		Base: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1")}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	k.Settle = 40 * time.Millisecond
	if !k.Switching() {
		t.Fatal("a keeper of a Switching is not switching")
	}
	if got := plan.Preference(); !got.LegacyFirst || strings.Join(got.Legacy, ",") != "vxlan" {
		t.Fatalf("the plan's preference %+v, want vxlan first", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- k.Run(ctx) }()

	time.Sleep(3 * k.Settle)
	if _, _, n := loop.last(); n != 0 {
		t.Fatal("published before the first apply prepared the peers")
	}
	k.FirstApplied()
	k.FirstApplied() // the reconciler calls it after every apply
	waitUntil(t, "the preference stops putting vxlan first", func() bool {
		p, _, _ := loop.last()
		return !p.LegacyFirst && strings.Join(p.Legacy, ",") == "vxlan"
	})
	_, attrs, _ := loop.last()
	if got := string(attrs.Encode()); !strings.Contains(got, `"BackendType":"vxlan"`) || !strings.Contains(got, `"WeftAlso":[{"BackendType":"wireguard"`) {
		t.Errorf("published during the switch: %s\nwant vxlan's BackendType and wireguard in WeftAlso", got)
	}
	if st := ReadState(StateFile(subnetFile)); len(st.Backends) != 2 || string(st.Backends[1].Raw) != `{"Type":"vxlan","VNI":7}` {
		t.Errorf("state file during the switch: %+v, want wireguard's and vxlan's own options", st)
	}
	time.Sleep(8 * k.Settle)
	if strings.Contains(calls2(&calls, &callsMu), "vxlan cleanup") {
		t.Fatal("vxlan retired while a peer speaks only vxlan")
	}
	// The last vxlan-only peer switches.
	loop.setLeases([]lease.Lease{loop.self, peerLease("10.5.2.0/24", "192.168.50.2", "wireguard"),
		peerLease("10.5.3.0/24", "192.168.50.3", "vxlan", "wireguard")})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the switch did not finish once no peer needed vxlan")
	}
	pref, attrs, _ := loop.last()
	if len(pref.Legacy) != 0 || pref.LegacyFirst {
		t.Errorf("preference after the switch %+v, want the zero one", pref)
	}
	if got, want := string(attrs.Encode()), `{"PublicIP":"192.168.50.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":"wireguard"}`; got != want {
		t.Errorf("lease after the switch:\n got %s\nwant %s", got, want)
	}
	if !strings.Contains(calls2(&calls, &callsMu), "vxlan cleanup") {
		t.Error("vxlan's data path was not cleaned up")
	}
	if st := ReadState(StateFile(subnetFile)); len(st.Backends) != 1 || st.Backends[0].Type != backends.WireGuard {
		t.Errorf("state file after the switch: %+v, want wireguard's alone", st)
	}
}

// TestStateFile: outside a switch the keeper writes the running backend
// to the state file at once (the next switch reads its options from
// there); the file round-trips; a missing or corrupt one reads as empty.
func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	path := StateFile(subnetFile)
	if st := ReadState(path); len(st.Backends) != 0 {
		t.Fatalf("a missing state file reads %+v", st)
	}
	cfg, err := backends.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":9}}`))
	if err != nil {
		t.Fatal(err)
	}
	k := NewKeeper(KeeperConfig{Config: cfg, Backend: recorder{"vxlan", new([]string)}, SubnetFile: subnetFile,
		Reconciler: &fakeLoop{}, Leases: &fakeLoop{}, Own: &fakeLoop{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if k.Switching() {
		t.Error("a keeper of one backend says it is switching")
	}
	if err := k.Run(context.Background()); err != nil {
		t.Errorf("Run outside a switch: %v", err)
	}
	st := ReadState(path)
	if len(st.Backends) != 1 || st.Backends[0].Type != "vxlan" || CompactJSON(st.Backends[0].Raw) != `{"Type":"vxlan","VNI":9}` {
		t.Errorf("state file %+v, want vxlan's Backend object", st)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	want := State{Backends: []Spec{{Type: "wireguard", Raw: json.RawMessage(`{"Type":"wireguard"}`)}}, CarriedMTU: 1450}
	if err := WriteState(path, want); err != nil {
		t.Fatal(err)
	}
	if got := ReadState(path); got.CarriedMTU != 1450 || len(got.Backends) != 1 || got.Backends[0].Type != "wireguard" {
		t.Errorf("round trip: %+v", got)
	}
	os.WriteFile(path, []byte(`{"Backends":[`), 0o600)
	if st := ReadState(path); len(st.Backends) != 0 || st.CarriedMTU != 0 {
		t.Errorf("a corrupt state file reads %+v, want empty", st)
	}
}

// TestHandOver: a backend kept at the end of a run is taken back by the
// next only when it is asked for with the same Backend object (white
// space aside); what is not taken is closed.
func TestHandOver(t *testing.T) {
	var h HandOver
	if _, ok := h.Take(Spec{Type: "vxlan"}); ok {
		t.Fatal("an empty hand-over gave a backend")
	}
	var calls []string
	wg, vx := closeRecorder{recorder{"wireguard", &calls}}, closeRecorder{recorder{"vxlan", &calls}}
	s := NewSwitching(backends.WireGuard, wg, []string{backends.VXLAN}, map[string]backends.Backend{backends.VXLAN: vx})
	h.Keep(s, []Spec{{Type: "wireguard", Raw: json.RawMessage(`{"Type":"wireguard"}`)}, {Type: "vxlan", Raw: json.RawMessage(`{"Type":"vxlan"}`)}})
	if _, ok := h.Take(Spec{Type: "wireguard", Raw: json.RawMessage(`{"Type":"wireguard","PSK":"x"}`)}); ok {
		t.Error("a backend with other options was taken over")
	}
	if b, ok := h.Take(Spec{Type: "vxlan", Raw: json.RawMessage(`{ "Type": "vxlan" }`)}); !ok || b != backends.Backend(vx) {
		t.Errorf("the same vxlan was not taken over: %v", ok)
	}
	h.CloseRest()
	if got := strings.Join(calls, ","); got != "wireguard close" {
		t.Errorf("closed: %s, want wireguard's alone", got)
	}
	if _, ok := h.Take(Spec{Type: "wireguard", Raw: json.RawMessage(`{"Type":"wireguard"}`)}); ok {
		t.Error("a closed backend was taken over")
	}
}

// closeRecorder is a recorder that logs Close.
type closeRecorder struct{ recorder }

func (c closeRecorder) Close() error { *c.log = append(*c.log, c.name+" close"); return nil }

// lockedRecorder is a recorder safe beside the test's reads.
type lockedRecorder struct {
	recorder
	mu *sync.Mutex
}

func (r lockedRecorder) Cleanup(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recorder.Cleanup(ctx)
}

func calls2(calls *[]string, mu *sync.Mutex) string {
	mu.Lock()
	defer mu.Unlock()
	return strings.Join(*calls, "\n")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCarriedMTUBounded: issue 42. A state file that carries an MTU no
// Ethernet has (a damaged or hand-edited one) gives the plan none; one
// within jumbo frames is kept.
func TestCarriedMTUBounded(t *testing.T) {
	dir := t.TempDir()
	subnetFile := filepath.Join(dir, "subnet.env")
	cfg, err := backends.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range []struct{ saved, want int }{{1450, 1450}, {9000, 9000}, {9001, 0}, {1 << 30, 0}, {-5, 0}} {
		if err := WriteState(StateFile(subnetFile), State{Backends: []Spec{{Type: "wireguard"}}, CarriedMTU: tt.saved}); err != nil {
			t.Fatal(err)
		}
		plan := NewPlan(context.Background(), leasetest.New(nil), subnetFile, cfg, lease.Attrs{}, false, log)
		if plan.CarriedMTU != tt.want {
			t.Errorf("state file carrying %d: plan carries %d, want %d", tt.saved, plan.CarriedMTU, tt.want)
		}
	}
}
