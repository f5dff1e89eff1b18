package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/liveswitch"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/mesh"
	"golang.org/x/sync/errgroup"
)

// The steps of run (daemon.go), each in a function of its own.

// openStore makes the etcd client -etcd-* ask for, warning when the
// password would go in clear.
func openStore(o *options, log *slog.Logger) (*etcdstore.Store, error) {
	store, err := etcdstore.New(o.etcd)
	if err != nil {
		return nil, err
	}
	if e := o.etcd.PlaintextPassword(); e != "" {
		log.Warn("the etcd password goes in clear to a plaintext endpoint; use https:// endpoints with -etcd-cafile",
			"endpoint", e)
	}
	return store, nil
}

// loadConfig waits for a network config that is valid (backends'
// checks) and does not overlap the underlay.
func loadConfig(ctx context.Context, store lease.Store, key string, ext underlay.ExternalInterface, guard *configGuard,
	log *slog.Logger) (*lease.Config, error) {
	return lease.WaitForConfig(ctx, store, key, lease.DefaultStartupRetry(), log,
		func(cfg *lease.Config) error {
			cfg, _ = guard.pin(cfg) // what this host runs is what must validate
			if err := backends.CheckConfig(cfg); err != nil {
				return err
			}
			if err := backends.ValidateOptions(cfg); err != nil {
				return err
			}
			return notOnUnderlay(cfg, ext)
		})
}

// startBackend sets up the backend env asks for and, before anything is
// reported ready, removes what another backend left: it would keep
// carrying traffic its own way (in clear, after a switch to wireguard).
//
// During a switch (plan has legacy backends) it runs them beside the
// config's, all in one liveswitch.Switching; a backend the previous run
// handed over running is taken back as it is.
func startBackend(ctx context.Context, o *options, env backends.Env, plan liveswitch.Plan,
	handOver *liveswitch.HandOver,
	obs *observer) (backends.Backend, error) {
	cfg, log := env.Config, env.Log
	backend, err := liveswitch.Build(ctx, env, plan, handOver)
	if err != nil {
		return nil, err
	}
	obs.setBackend(backend, cfg.Backend.Type, backends.NewPathRule(cfg, env.External))
	if carried, ok := backends.CarriedMTU(backend); ok {
		log.Info("the device keeps the MTU containers started with under the previous backend: their packets pass whole, "+
			"and an encrypted one too large for the underlay leaves in fragments",
			"backend", cfg.Backend.Type, "device_mtu", carried, "mtu", backend.MTU(),
			"to_drop_it", "restart docker, which takes FLANNEL_MTU, and remove "+liveswitch.StateFile(o.subnetFile))
	}
	if o.behindNAT && cfg.Backend.Type != backends.WireGuard {
		log.Warn("-behind-nat is for the wireguard backend; this network's backend cannot reach a host behind NAT",
			"backend", cfg.Backend.Type)
	}
	keep := append([]string{cfg.Backend.Type}, plan.LegacyTypes()...)
	removed, err := backends.RemoveOthers(env.Kernel, keep, env.External, backends.KeepsDirectRoutes(cfg))
	if len(removed) > 0 || err != nil {
		log.Warn("removed what another backend left on this host (Backend.Type changed)", "backend", cfg.Backend.Type,
			"removed", removed, "err", err)
	}
	return backend, nil
}

// leaseSubnets are the lease's current subnet of each family the network
// carries (nil for one it does not).
func leaseSubnets(cfg *lease.Config, holder *lease.Holder) []func() netip.Prefix {
	var v4, v6 func() netip.Prefix
	if cfg.EnableIPv4 {
		v4 = func() netip.Prefix { return holder.Current().Subnet }
	}
	if cfg.EnableIPv6 {
		v6 = func() netip.Prefix { return holder.Current().IPv6Subnet }
	}
	return []func() netip.Prefix{v4, v6}
}

// daemonLoops are what weftd runs until it stops.
type daemonLoops struct {
	store      *etcdstore.Store
	watcher    *lease.Watcher
	holder     *lease.Holder
	reconciler *mesh.Reconciler
	backend    backends.Backend
	// ext is the external interface the run chose (followUnderlay).
	ext underlay.ExternalInterface
	// attrs are the lease's attributes, republished when the key changes.
	attrs lease.Attrs
	// configType is the Backend.Type the config asks for now.
	configType *atomic.Pointer[string]
	// keeper moves the host through a live switch (nothing to do outside
	// one).
	keeper *liveswitch.Keeper
	// members is signed membership (nil: off).
	members *members
}

// start starts the loops in g: the outside peers' watch (when the network
// has PeersNetwork), the key watch (a backend with a key), the backend
// type's watch, the underlay's, the tunnel source filter's check (every
// -iptables-resync), the lease watch, the holder and the reconciler.
func (l daemonLoops) start(ctx context.Context, g *errgroup.Group, o *options, log *slog.Logger) {
	cfg := l.reconciler.Config
	if cfg.PeersNetwork.IsValid() {
		outside := lease.NewPeerWatcher(l.store, log)
		outside.Admit = l.members.admitPeer()
		l.reconciler.Outside = outside
		g.Go(func() error { return outside.Run(ctx) })
	}
	if reloader, ok := backends.As[backends.KeyReloader](l.backend); ok {
		g.Go(func() error { return watchKey(ctx, reloader, l.holder, l.attrs, log) })
	}
	if l.keeper.Switching() {
		g.Go(func() error { return l.keeper.Run(ctx) })
	}
	if l.members != nil {
		g.Go(func() error { return l.members.run(ctx, l.holder, l.reconciler, log) })
	}
	g.Go(func() error {
		return watchBackendType(ctx, l.members.configStore(l.store), cfg, o.resync, l.configType, o.guard, log)
	})
	g.Go(func() error { return followUnderlay(ctx, o, l.ext, cfg.EnableIPv6, log) })
	if keeper, ok := backends.As[backends.FilterKeeper](l.backend); ok {
		every := time.Duration(o.iptablesSync) * time.Second
		g.Go(func() error { return backends.KeepFilterEvery(ctx, keeper, every, log) })
	}
	if observer, ok := backends.As[backends.EndpointObserver](l.backend); ok {
		g.Go(func() error { return publishObservations(ctx, observer, l.holder, o.resync, log) })
	}
	g.Go(func() error { return l.watcher.Run(ctx) })
	g.Go(func() error { return l.holder.Run(ctx) })
	g.Go(func() error { return l.reconciler.Run(ctx) })
}

// leaveDataPath ends the backend at exit: with cleanup (-cleanup-on-exit)
// it removes the whole data path; otherwise it stays, so traffic keeps
// flowing until weftd is back. A backend the config has left (switched
// away from) first undoes what only it knows (backends.Leaver: the
// extension's routes), which the next backend could not find.
//
// At a live switch (the run ends with errSwitch) the backends are handed
// to the next run instead (handOver).
func leaveDataPath(backend backends.Backend, o *options, runErr error, switchedAway bool, keeper *liveswitch.Keeper,
	handOver *liveswitch.HandOver, log *slog.Logger) {
	cleanup := o.cleanupOnExit && !runsAgain(runErr)
	if leaver, ok := backends.As[backends.Leaver](backend); ok && switchedAway {
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
	} else if errors.Is(runErr, errSwitch) && keeper != nil {
		handOver.Keep(backend, keeper.RunningState().Backends)
		return
	} else {
		log.Info("leaving the data path in place; traffic keeps flowing until weftd is back")
	}
	backend.Close()
}

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
