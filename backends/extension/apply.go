package extension

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Backend runs the extension commands. The zero value is not usable; use
// New.
type Backend struct {
	opts Options
	mtu  int
	log  *slog.Logger
	data json.RawMessage

	mu      sync.Mutex
	want    map[string]Subnet
	selfEnv []string // PostStartupCommand's environment for the latest own lease
	kick    chan struct{}

	// What last succeeded: written by the worker only (under mu, which
	// doneKeys reads it with).
	done     map[string]Subnet
	postDone string

	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New reads the options from the config's Backend object.
func New(raw json.RawMessage, ext underlay.ExternalInterface, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	return &Backend{opts: opts, mtu: ext.MTU, log: log.With("component", "extension"),
		kick: make(chan struct{}, 1), done: map[string]Subnet{}}, nil
}

// Footprint is empty: what the commands make is the operator's.
func Footprint() netkernel.Footprint { return netkernel.Footprint{} }

// MTU is the external interface's, as flannel's extension writes it.
func (b *Backend) MTU() int { return b.mtu }

// Setup runs PreStartupCommand, whose output becomes the lease's
// BackendData, and starts the worker that runs the other commands. A
// failing PreStartupCommand stops weftd, as it stops flanneld: without its
// output there is nothing right to publish.
func (b *Backend) Setup(ctx context.Context) error {
	if b.opts.PreStartupCommand != "" {
		out, err := Command{Key: "PreStartupCommand", Line: b.opts.PreStartupCommand}.Run(ctx, b.opts.CommandTimeout)
		if err != nil {
			return fmt.Errorf("%w; output: %q", err, out)
		}
		data, _ := json.Marshal(out)
		if len(data) > MaxBackendData {
			// Past the bound every host refuses the lease, and this host
			// would not recognise its own at the next start.
			return fmt.Errorf("PreStartupCommand %q printed %d bytes (as BackendData, a JSON string), more than the %d a lease carries; print a short token, not the data itself",
				b.opts.PreStartupCommand, len(data), MaxBackendData)
		}
		b.log.Info("ran PreStartupCommand", "command", b.opts.PreStartupCommand, "output", out)
		b.data = data
	}
	// The worker outlives Setup's context: it runs until Close.
	worker, stop := context.WithCancel(context.Background())
	b.stop = stop
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			select {
			case <-worker.Done():
				return
			case <-b.kick:
				b.runPending(worker)
			}
		}
	}()
	return nil
}

// MaxBackendData bounds PreStartupCommand's output as published: with the
// rest of the lease it stays well under the 16 KiB every host accepts.
const MaxBackendData = 8 << 10

// BackendData is PreStartupCommand's output as a JSON string (nil
// without one), as flannel publishes it.
func (b *Backend) BackendData() json.RawMessage { return b.data }

// Apply records the peers the commands should have added and wakes the
// worker; it never waits for a command. Every whole apply (each resync)
// wakes it again, which is how a failed command is retried.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	want, skipped := Wanted(d)
	b.mu.Lock()
	b.want, b.selfEnv = want, selfEnv(d)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default: // a pass is already due; it reads the newest state
	}
	return errors.Join(skipped...)
}

// selfEnv is PostStartupCommand's environment: flannel's NETWORK, SUBNET,
// IPV6SUBNET, PUBLIC_IP and PUBLIC_IPV6 of this host's own lease.
func selfEnv(d mesh.Desired) []string {
	self := Subnet{Subnet: d.Self.Subnet, IPv6Subnet: d.Self.IPv6Subnet, PublicIP: d.Self.Attrs.PublicIP, PublicIPv6: d.Self.Attrs.PublicIPv6Addr()}
	return append([]string{"NETWORK=" + text(d.Network, d.Network.IsValid())}, self.Env()...)
}

// runPending runs what the latest desired state asks for: the
// PostStartupCommand when this host's lease is new to it (the peer commands
// wait until it succeeds: they may need what it sets up), then the removes
// and the adds. A command that fails is logged with its output and left
// pending for the next pass; the others run.
func (b *Backend) runPending(ctx context.Context) {
	b.mu.Lock()
	want, env := b.want, b.selfEnv
	b.mu.Unlock()
	self := strings.Join(env, " ")
	if b.opts.PostStartupCommand != "" && b.postDone != self {
		if !b.run(ctx, Command{Key: "PostStartupCommand", Line: b.opts.PostStartupCommand, Env: env}, "") {
			return
		}
	}
	b.postDone = self
	remove, add := Plan(want, b.done)
	for _, s := range remove {
		if b.opts.SubnetRemoveCommand == "" ||
			b.run(ctx, Command{Key: "SubnetRemoveCommand", Line: b.opts.SubnetRemoveCommand, Env: s.Env(), Stdin: s.Data}, s.Key) {
			b.mu.Lock()
			delete(b.done, s.Key)
			b.mu.Unlock()
		}
	}
	for _, s := range add {
		if b.opts.SubnetAddCommand == "" ||
			b.run(ctx, Command{Key: "SubnetAddCommand", Line: b.opts.SubnetAddCommand, Env: s.Env(), Stdin: s.Data}, s.Key) {
			b.mu.Lock()
			b.done[s.Key] = s
			b.mu.Unlock()
		}
	}
}

// run runs one command and logs how it went; it reports success.
func (b *Backend) run(ctx context.Context, c Command, peer string) bool {
	out, err := c.Run(ctx, b.opts.CommandTimeout)
	log := b.log.With("command", c.Line, "env", strings.Join(c.Env, " "), "output", out)
	if peer != "" {
		log = log.With("peer", peer)
	}
	if err != nil {
		if ctx.Err() == nil {
			log.Error("extension command failed; it runs again at the next resync", "err", err)
		}
		return false
	}
	log.Info("ran " + c.Key)
	return true
}

// Leave runs SubnetRemoveCommand for every peer whose add succeeded, once
// the worker has stopped: the host is leaving the extension backend for
// another, and the routes the adds made would otherwise stay. The script's
// other work (PostStartupCommand's) is the operator's to undo.
func (b *Backend) Leave(ctx context.Context) error {
	b.Close()
	if b.opts.SubnetRemoveCommand == "" {
		return nil
	}
	b.mu.Lock()
	done := slices.Collect(maps.Values(b.done))
	b.mu.Unlock()
	slices.SortFunc(done, func(x, y Subnet) int { return strings.Compare(x.Key, y.Key) })
	var errs []error
	for _, s := range done {
		c := Command{Key: "SubnetRemoveCommand", Line: b.opts.SubnetRemoveCommand, Env: s.Env(), Stdin: s.Data}
		if !b.run(ctx, c, s.Key) {
			errs = append(errs, fmt.Errorf("SubnetRemoveCommand for %s failed", s.Key))
			continue
		}
		b.mu.Lock()
		delete(b.done, s.Key)
		b.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Cleanup removes nothing: flannel's extension has no teardown command,
// and what the commands made is not weft's to know.
func (b *Backend) Cleanup(context.Context) error { return nil }

// Close stops the worker (a command still running is killed; every add
// runs again when weftd starts, as flannel's do).
func (b *Backend) Close() error {
	if b.stop != nil {
		b.stop()
		b.wg.Wait()
	}
	return nil
}

// doneKeys lists the peers whose add command succeeded (tests).
func (b *Backend) doneKeys() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Sorted(maps.Keys(b.done))
}
