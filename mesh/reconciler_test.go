package mesh

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
)

// recordingApplier remembers the last state applied and can be told to fail.
type recordingApplier struct {
	mu    sync.Mutex
	last  Desired
	calls int
	fail  error
}

func (a *recordingApplier) Apply(_ context.Context, d Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	if a.fail != nil {
		return a.fail
	}
	a.last = d
	return nil
}

func (a *recordingApplier) peers() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return render(Desired{Peers: a.last.Peers})
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func TestNodeReconcilesOnChangesAndResync(t *testing.T) {
	cfg := testConfig(t)
	var logs lockedBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	app := &recordingApplier{}
	tn := startNode(t, cfg, app, 100*time.Millisecond, log)
	defer tn.stop()
	store, watcher, holder, self, ctx := tn.store, tn.watcher, tn.holder, tn.self, context.Background()

	store.PutRaw("10.5.7.0-24", []byte(`{"PublicIP":"192.168.50.7","PublicIPv6":null,"BackendType":"host-gw"}`))
	waitUntil(t, func() bool { return app.peers() == "peer 10.5.7.0/24 via 192.168.50.7\n" })

	// A hostile lease is skipped with one warning, the good peer stays.
	store.PutRaw("10.9.0.0-24", []byte(`{"PublicIP":"192.168.50.8","PublicIPv6":null,"BackendType":"host-gw"}`))
	store.PutRaw("10.5.8.0-24", []byte(`{"PublicIP":`))
	time.Sleep(400 * time.Millisecond) // several resync ticks
	if got := app.peers(); got != "peer 10.5.7.0/24 via 192.168.50.7\n" {
		t.Errorf("peers after hostile leases: %s", got)
	}
	if n := strings.Count(logs.String(), "key=10.9.0.0-24"); n != 1 {
		t.Errorf("%d warnings for the outside lease, want 1", n)
	}

	// Errors are retried on the resync tick and logged once.
	app.mu.Lock()
	app.fail = errors.New("netlink: boom")
	before := app.calls
	app.mu.Unlock()
	time.Sleep(400 * time.Millisecond)
	app.mu.Lock()
	retries := app.calls - before
	app.fail = nil
	app.mu.Unlock()
	if retries < 2 {
		t.Errorf("only %d applies while failing; the resync must retry", retries)
	}
	if n := strings.Count(logs.String(), "netlink: boom"); n != 1 {
		t.Errorf("failure logged %d times, want once", n)
	}

	// Our own lease deleted by hand: claimed again with the same subnet.
	store.Delete(ctx, self.Key())
	waitUntil(t, func() bool {
		rev, ok := watcher.RecordRevision(self.Key())
		return ok && rev == holder.Current().Revision && holder.Current().Subnet == self.Subnet
	})
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testReconciler is a Reconciler over the in-memory store with a real Watcher and
// Holder, this host at 192.168.50.1; stop ends all three.
type testReconciler struct {
	reconciler *Reconciler
	store      *leasetest.Store
	watcher    *lease.Watcher
	holder     *lease.Holder
	self       lease.Lease
	stop       func()
}

func startNode(t *testing.T, cfg *lease.Config, app Applier, resync time.Duration, log *slog.Logger, set ...func(*Reconciler)) *testReconciler {
	t.Helper()
	store := leasetest.New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	// This host leases 10.5.1.0/24, never a random subnet: the tests
	// write other hosts' leases at fixed keys (10.5.7.0-24, 10.5.100.0-24
	// and up), and one landing on this host's own lease would be a takeover.
	req := lease.ClaimRequest{Config: cfg, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1"), BackendType: "host-gw"},
		Previous: netip.MustParsePrefix("10.5.1.0/24")}
	self, err := lease.Claim(ctx, store, req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	tn := &testReconciler{store: store, self: self, watcher: lease.NewWatcher(store, log), holder: lease.NewHolder(store, req, self, time.Minute, log)}
	tn.reconciler = &Reconciler{Config: cfg, Leases: tn.watcher, Own: tn.holder, Backend: app, Resync: resync, Log: log}
	for _, f := range set {
		f(tn.reconciler)
	}
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{tn.watcher.Run, tn.holder.Run, tn.reconciler.Run} {
		wg.Go(func() { run(ctx) })
	}
	tn.stop = func() { cancel(); wg.Wait() }
	return tn
}

// sliceApplier records where the peers of each apply live, to tell a state
// handed over again from one computed anew.
type sliceApplier struct {
	mu     sync.Mutex
	arrays []*Peer
}

func (a *sliceApplier) Apply(_ context.Context, d Desired) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(d.Peers) > 0 {
		a.arrays = append(a.arrays, unsafe.SliceData(d.Peers))
	}
	return nil
}

// applies returns how many applies had peers and how many distinct
// arrays of peers they were handed.
func (a *sliceApplier) applies() (n, distinct int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[*Peer]bool{}
	for _, p := range a.arrays {
		seen[p] = true
	}
	return len(a.arrays), len(seen)
}

// TestResyncTicksReuseTheState: a resync tick with nothing changed hands
// the backend the peers of the last whole apply again instead of a second
// copy computed from the leases; a change, or admission (which time alone
// can change), has the state computed anew.
func TestResyncTicksReuseTheState(t *testing.T) {
	cfg := testConfig(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, admit := range []bool{false, true} {
		app := &sliceApplier{}
		var set []func(*Reconciler)
		if admit {
			set = append(set, func(r *Reconciler) { r.Admit = func(*lease.Lease) string { return "" } })
		}
		tn := startNode(t, cfg, app, 20*time.Millisecond, log, set...)
		tn.store.PutRaw("10.5.7.0-24", []byte(`{"PublicIP":"192.168.50.7","PublicIPv6":null,"BackendType":"host-gw"}`))
		// Past the start (the first applies, this host's own lease
		// written), five more ticks.
		waitUntil(t, func() bool { n, _ := app.applies(); return n >= 3 })
		n0, d0 := app.applies()
		waitUntil(t, func() bool { n, _ := app.applies(); return n >= n0+5 })
		n, distinct := app.applies()
		if !admit && distinct != d0 {
			t.Errorf("%d ticks with nothing changed were handed %d new arrays of peers, want none", n-n0, distinct-d0)
		}
		if admit && distinct < d0+n-n0-1 {
			t.Errorf("with admission, %d ticks were handed only %d new arrays of peers: the state was not computed anew", n-n0, distinct-d0)
		}
		tn.store.PutRaw("10.5.8.0-24", []byte(`{"PublicIP":"192.168.50.8","PublicIPv6":null,"BackendType":"host-gw"}`))
		waitUntil(t, func() bool { _, d := app.applies(); return d >= distinct+1 })
		tn.stop()
	}
}
