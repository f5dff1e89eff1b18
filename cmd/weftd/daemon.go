package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/liveswitch"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/cmd/internal/host"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/mesh"
)

// run is weftd from connecting to etcd to shutdown, step by step as the
// design lays it out. It returns nil on a clean stop; it never returns
// because a lease was lost or etcd went away. handOver carries the
// running backends from one run to the next at a live switch; configType
// is the Backend.Type the config asks for now (watchBackendType keeps
// it): at exit, a backend the config has left undoes what only it knows.
func run(ctx context.Context, o *options, log *slog.Logger, handOver *liveswitch.HandOver) error {
	store, err := openStore(o, log)
	if err != nil {
		return err
	}
	defer store.Close()
	obs := newObserver()
	obs.guard = o.guard
	g, ctx := errgroup.WithContext(ctx)
	if err := serveHealth(ctx, g, o, obs); err != nil {
		return err
	}
	members, err := openMembers(o, store, log)
	if err != nil {
		return err
	}
	obs.members = members
	self, err := learnHost(ctx, store, members.configStore(store), o, log)
	if err != nil {
		return err
	}
	cfg := self.cfg
	kernel := netkernel.NewNetlink(obs.kernelCalls())
	plan := liveswitch.NewPlan(ctx, store, o.subnetFile, cfg, self.attrs(), self.newIdentity, log)
	backend, err := startBackend(ctx, o, self.env(o, plan, kernel, obs, log), plan, handOver, obs)
	if err != nil {
		return err
	}
	var configType atomic.Pointer[string]
	configType.Store(&cfg.Backend.Type)
	var keeper *liveswitch.Keeper // made once the loops exist
	defer func() { leaveDataPath(backend, o, err, *configType.Load() != cfg.Backend.Type, keeper, handOver, log) }()

	req, own, err := claimLease(ctx, store, o, cfg, ownAttrs(cfg, self, backend, plan), self, members, log)
	if err != nil {
		return err
	}
	writeEnv := subnetFileWriter(o.subnetFile, cfg, backend.MTU(), o.ipMasq, log)
	writeEnv(own)
	hostKeeper := host.NewKeeper(kernel, time.Duration(o.iptablesSync)*time.Second, log)
	hostKeeper.TurnOnForwarding(cfg.EnableIPv6)

	watcher := lease.NewWatcher(store, log)
	holder := lease.NewHolder(store, req, own, o.renewMargin, log)
	applied := func() { keeper.FirstApplied() }
	reconciler := newReconciler(o, cfg, plan, watcher, holder, backend, writeEnv, applied, obs, self.ext, log)
	reconciler.Admit = members.admit()
	keeper = liveswitch.NewKeeper(liveswitch.KeeperConfig{Config: cfg, Backend: backend, Plan: plan,
		SubnetFile: o.subnetFile, Reconciler: reconciler, Leases: watcher, Own: holder, Base: req.Attrs, Log: log})
	obs.setLoops(reconciler, watcher, holder)
	overlay := overlayOnUnderlay(cfg, self.ext)
	if err := keepFirewall(ctx, g, o, cfg, holder, overlay, clampMTU(backend), obs, log); err != nil {
		return err
	}
	if o.blackholeRoute {
		hostKeeper.KeepBlackholes(ctx, g, leaseSubnets(cfg, holder)...)
	}
	daemonLoops{store: store, watcher: watcher, holder: holder, reconciler: reconciler, backend: backend, ext: self.ext,
		attrs: req.Attrs, configType: &configType, keeper: keeper, members: members}.start(ctx, g, o, log)
	err = g.Wait()
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// hostFacts are what a run learns of this host before it builds the
// backend: the external interface, the public addresses, the network
// config and the host's ID.
type hostFacts struct {
	ext                 underlay.ExternalInterface
	publicIP, publicIP6 netip.Addr
	cfg                 *lease.Config
	hostID              keys.HostID
	// identity signs this host's lease; newIdentity says it was made at
	// this start (an upgrade from a weft that did not sign: the host's
	// unsigned lease is adopted once).
	identity    keys.Identity
	newIdentity bool
}

// learnHost picks the external interface, waits for a valid network
// config, and reads the public addresses and the host ID.
func learnHost(ctx context.Context, store *etcdstore.Store, configs lease.Store, o *options, log *slog.Logger) (hostFacts, error) {
	var h hostFacts
	var err error
	if h.ext, h.publicIP, err = chooseExternal(o, log); err != nil {
		return h, err
	}
	if h.cfg, err = loadConfig(ctx, configs, store.Prefix()+"/config", h.ext, o.guard, log); err != nil {
		return h, err
	}
	if pinned, overridden := o.guard.pin(h.cfg); len(overridden) > 0 {
		if err := backends.CheckConfig(pinned); err != nil {
			return h, fmt.Errorf("-require-encryption: the network config with the wireguard backend: %w", err)
		}
		h.cfg = pinned
		o.guard.say(refusedNote(overridden), log)
	}
	if h.publicIP, h.publicIP6, err = hostAddresses(o, h.cfg, h.ext, h.publicIP, log); err != nil {
		return h, err
	}
	if h.identity, h.newIdentity, err = loadIdentity(o, log); err != nil {
		return h, err
	}
	h.hostID, err = loadHostID(o, log)
	return h, err
}

// attrs are this host's own: its PublicIP and host ID, by which it knows
// its lease.
func (h hostFacts) attrs() lease.Attrs {
	return lease.Attrs{PublicIP: h.publicIP, HostID: h.hostID, Identity: h.identity.Public()}
}

// env is what the backends are built with on this host.
func (h hostFacts) env(o *options, plan liveswitch.Plan, kernel netkernel.Kernel, obs *observer,
	log *slog.Logger) backends.Env {
	return backends.Env{Config: h.cfg, External: h.ext, PublicIP: h.publicIP, PublicIPv6: h.publicIP6, Log: log,
		KeyFile: o.keyFile, CarriedMTU: plan.CarriedMTU, Previous: plan.Previous, WireGuardImplementation: o.wgImpl,
		BehindNAT: o.behindNAT, SourceFilter: sourceFilter(o, h.cfg, plan, log), Kernel: kernel, Calls: obs.kernelCalls()}
}

// newReconciler is the reconcile loop of this run, starting from plan's
// path preference (a live switch's), with its hooks: the subnet file,
// metrics, readiness (and applied, after every apply) and the path log.
func newReconciler(o *options, cfg *lease.Config, plan liveswitch.Plan, watcher *lease.Watcher, holder *lease.Holder,
	backend backends.Backend, writeEnv func(lease.Lease), applied func(), obs *observer, ext underlay.ExternalInterface,
	log *slog.Logger) *mesh.Reconciler {
	return &mesh.Reconciler{
		Config: cfg, Preference: plan.Preference(), Leases: watcher, Own: holder, Backend: backend,
		Resync: o.resync, Log: log,
		OnOwnLeaseChange: writeEnv,
		OnReconcile:      obs.observeReconcile,
		OnApplied:        func(self lease.Lease, peers int) { obs.markReady(self, peers, log); applied() },
		OnPeersChanged:   newPathLog(backends.NewPathRule(cfg, ext), log).peersChanged,
	}
}
