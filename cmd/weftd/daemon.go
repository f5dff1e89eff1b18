package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/cmd/internal/host"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// run is weftd from connecting to etcd to shutdown, step by step as the
// design lays it out. It returns nil on a clean stop; it never returns
// because a lease was lost or etcd went away.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	store, err := openStore(o, log)
	if err != nil {
		return err
	}
	defer store.Close()
	obs := newObserver()
	g, ctx := errgroup.WithContext(ctx)
	if err := serveHealth(ctx, g, o, obs); err != nil {
		return err
	}

	ext, publicIP, err := chooseExternal(o, log)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(ctx, store, ext, log)
	if err != nil {
		return err
	}
	publicIP, publicIP6, err := hostAddresses(o, cfg, ext, publicIP, log)
	if err != nil {
		return err
	}
	hostID, err := loadHostID(o, log)
	if err != nil {
		return err
	}
	kernel := netkernel.NewNetlink(nil, obs.kernelCalls())
	plan := planSwitch(ctx, store, o, cfg, lease.Attrs{PublicIP: publicIP, HostID: hostID}, log)
	backend, err := startBackend(ctx, o, backends.Env{Config: cfg, External: ext, PublicIP: publicIP, PublicIPv6: publicIP6, Log: log,
		KeyFile: o.keyFile, CarriedMTU: plan.carriedMTU, Previous: plan.previous, WireGuardImplementation: o.wgImpl, BehindNAT: o.behindNAT, SourceFilter: sourceFilter(o, cfg, plan, log),
		Kernel: kernel, Calls: obs.kernelCalls()}, plan, obs)
	if err != nil {
		return err
	}
	// The Backend.Type the config asks for now (watchBackendType keeps it):
	// at exit, a backend the config has left undoes what only it knows.
	var configType atomic.Pointer[string]
	configType.Store(&cfg.Backend.Type)
	sw := &switchKeeper{} // set up (init) once the loops exist
	defer func() {
		leaveDataPath(backend, o.cleanupOnExit && !runsAgain(err), *configType.Load() != cfg.Backend.Type, switching(err, sw), log)
	}()

	req, own, err := claimLease(ctx, store, o, cfg, ownAttrs(cfg, hostID, publicIP, publicIP6, backend, plan), log)
	if err != nil {
		return err
	}
	writeEnv := subnetFileWriter(o.subnetFile, cfg, backend.MTU(), o.ipMasq, log)
	writeEnv(own)
	hostKeeper := host.NewKeeper(kernel, time.Duration(o.iptablesSync)*time.Second, log)
	hostKeeper.TurnOnForwarding(cfg.EnableIPv6)

	watcher := lease.NewWatcher(store, log)
	holder := lease.NewHolder(store, req, own, o.renewMargin, log)
	reconciler := &mesh.Reconciler{
		Config: cfg, Leases: watcher, Own: holder, Backend: backend, Resync: o.resync, Log: log,
		OnOwnLeaseChange: writeEnv,
		OnReconcile:      obs.observeReconcile,
		OnApplied:        func(self lease.Lease, peers int) { obs.markReady(self, peers, log); sw.firstApplied() },
		OnPeersChanged:   newPathLog(backends.NewPathRule(cfg, ext), log).peersChanged,
	}
	obs.setLoops(reconciler, watcher, holder)
	if err := keepFirewall(ctx, g, o, cfg, holder, overlayOnUnderlay(cfg, ext), clampMTU(backend), obs, log); err != nil {
		return err
	}
	if o.blackholeRoute {
		hostKeeper.KeepBlackholes(ctx, g, leaseSubnets(cfg, holder)...)
	}
	sw.init(o, cfg, backend, plan, reconciler, watcher, holder, req.Attrs, log)
	daemonLoops{store: store, watcher: watcher, holder: holder, reconciler: reconciler, backend: backend, ext: ext,
		attrs: req.Attrs, configType: &configType, switching: sw}.start(ctx, g, o, log)
	err = g.Wait()
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
