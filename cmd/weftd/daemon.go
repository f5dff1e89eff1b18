package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/mesh"
)

// run is weftd from connecting to etcd to shutdown, step by step as the
// design lays it out. It returns nil on a clean stop; it never returns
// because a lease was lost or etcd went away.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	store, err := etcdstore.New(o.etcd)
	if err != nil {
		return err
	}
	if e := o.etcd.PlaintextPassword(); e != "" {
		log.Warn("the etcd password goes in clear to a plaintext endpoint; use https:// endpoints with -etcd-cafile", "endpoint", e)
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
	cfg, err := lease.WaitForConfig(ctx, store, store.Prefix()+"/config", lease.DefaultStartupRetry(), log, func(cfg *lease.Config) error {
		if err := backends.ValidateOptions(cfg); err != nil {
			return err
		}
		return notOnUnderlay(cfg, ext)
	})
	if err != nil {
		return err
	}

	publicIP, publicIP6, err := hostAddresses(o, cfg, ext, publicIP, log)
	if err != nil {
		return err
	}
	kernel := netutil.NewNetlink(nil, obs.kernelCalls())
	backend, err := setUpBackend(ctx, backends.Env{Config: cfg, External: ext, PublicIP: publicIP, PublicIPv6: publicIP6, Log: log, KeyFile: o.keyFile,
		WireGuardImplementation: o.wgImpl, BehindNAT: o.behindNAT, SourceFilter: sourceFilter(o, cfg, log),
		Kernel: kernel, Calls: obs.kernelCalls()})
	if err != nil {
		return err
	}
	obs.setBackend(backend, cfg.Backend.Type)
	if o.behindNAT && cfg.Backend.Type != backends.WireGuard {
		log.Warn("-behind-nat is for the wireguard backend; this network's backend cannot reach a host behind NAT", "backend", cfg.Backend.Type)
	}
	// The Backend.Type the config asks for now (watchBackendType keeps it):
	// at exit, a backend the config has left undoes what only it knows.
	var configType atomic.Pointer[string]
	configType.Store(&cfg.Backend.Type)
	defer func() { leaveDataPath(backend, o.cleanupOnExit, *configType.Load() != cfg.Backend.Type, log) }()
	// Before anything is reported ready: what another backend left would
	// keep carrying traffic its own way (in clear, after a switch to
	// wireguard).
	if removed, err := backends.RemoveOthers(kernel, cfg.Backend.Type, ext, backends.KeepsDirectRoutes(cfg)); len(removed) > 0 || err != nil {
		log.Warn("removed what another backend left on this host (Backend.Type changed)", "backend", cfg.Backend.Type, "removed", removed, "err", err)
	}

	req, own, err := claimLease(ctx, store, o, cfg, ownAttrs(cfg, publicIP, publicIP6, backend), log)
	if err != nil {
		return err
	}
	writeEnv := subnetFileWriter(o.subnetFile, cfg, backend.MTU(), o.ipMasq, log)
	writeEnv(own)
	turnOnForwarding(cfg, log)

	watcher := lease.NewWatcher(store, log)
	holder := lease.NewHolder(store, req, own, o.renewMargin, log)
	reconciler := &mesh.Reconciler{
		Config: cfg, Leases: watcher, Own: holder, Backend: backend, Resync: o.resync, Log: log,
		OnOwnLeaseChange: writeEnv,
		OnReconcile:      obs.observeReconcile,
		OnApplied:        func(self lease.Lease, peers int) { obs.markReady(self, peers, log) },
	}
	if cfg.PeersNetwork.IsValid() {
		outside := lease.NewPeerWatcher(store, log)
		reconciler.Outside = outside
		g.Go(func() error { return outside.Run(ctx) })
	}
	obs.setLoops(reconciler, watcher, holder)
	if reloader, ok := backend.(backends.KeyReloader); ok {
		g.Go(func() error { return watchKey(ctx, reloader, holder, req.Attrs, log) })
	}
	if err := keepFirewall(ctx, g, o, cfg, holder, overlayOnUnderlay(cfg, ext), obs, log); err != nil {
		return err
	}
	if o.blackholeRoute {
		keepBlackholes(ctx, g, o, cfg, kernel, holder, log)
	}
	g.Go(func() error { return watchBackendType(ctx, store, cfg.Backend.Type, o.resync, &configType, log) })
	g.Go(func() error { return watcher.Run(ctx) })
	g.Go(func() error { return holder.Run(ctx) })
	g.Go(func() error { return reconciler.Run(ctx) })
	err = g.Wait()
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// setUpBackend builds the backend the config asks for and creates or
// adopts its devices.
func setUpBackend(ctx context.Context, env backends.Env) (backends.Backend, error) {
	backend, err := backends.New(env)
	if err != nil {
		return nil, err
	}
	if err := backend.Setup(ctx); err != nil {
		return nil, fmt.Errorf("setting up the %s backend: %w", env.Config.Backend.Type, err)
	}
	return backend, nil
}

// leaveDataPath ends the backend at exit: with cleanup (-cleanup-on-exit)
// it removes the whole data path; otherwise it stays, so traffic keeps
// flowing until weftd is back. A backend the config has left (switched
// away from) first undoes what only it knows (backends.Leaver: the
// extension's routes), which the next backend could not find.
func leaveDataPath(backend backends.Backend, cleanup, switchedAway bool, log *slog.Logger) {
	if leaver, ok := backend.(backends.Leaver); ok && switchedAway {
		log.Info("the network config has left this backend: undoing what its peers' commands made")
		if err := leaver.Leave(context.Background()); err != nil {
			log.Error("leaving the backend", "err", err)
		}
	}
	if cleanup {
		log.Info("removing weft's data path (-cleanup-on-exit)")
		if err := backend.Cleanup(context.Background()); err != nil {
			log.Error("cleanup", "err", err)
		}
	} else {
		log.Info("leaving the data path in place; traffic keeps flowing until weftd is back")
	}
	backend.Close()
}

// keyCheckInterval is how often weftd looks for a key rotated on disk.
const keyCheckInterval = 2 * time.Second

// serveHealth serves /healthz (alive), /readyz (data path programmed),
// /status and /metrics on -healthz-ip (loopback by default) until ctx ends.
func serveHealth(ctx context.Context, g *errgroup.Group, o *options, obs *observer) error {
	if o.healthzPort == 0 {
		return nil
	}
	addr := net.JoinHostPort(o.healthzIP, strconv.Itoa(o.healthzPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health endpoint on %s (-healthz-ip, -healthz-port): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	obs.handlers(mux)
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	// Bounded everywhere, so a slow or stuck client holds nothing for long;
	// the CPU profile is the one long response (30 s by default).
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10}
	go srv.Serve(ln)
	g.Go(func() error {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		return srv.Shutdown(shutdownCtx)
	})
	return nil
}
