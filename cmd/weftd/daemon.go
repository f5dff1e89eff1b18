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
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// run is weftd from connecting to etcd to shutdown. It returns nil on a
// clean stop; it never returns because a lease was lost or etcd went away.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	store, err := lease.NewEtcdStore(o.etcd)
	if err != nil {
		return err
	}
	defer store.Close()

	obs := newObserver()
	g, ctx := errgroup.WithContext(ctx)
	if o.healthzPort != 0 {
		srv, err := serveHealth(o, obs)
		if err != nil {
			return err
		}
		g.Go(func() error {
			<-ctx.Done()
			shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			return srv.Shutdown(shutdownCtx)
		})
	}

	ext, publicIP, err := chooseExternal(o, log)
	if err != nil {
		return err
	}
	cfg, err := waitForConfig(ctx, store, log, func(cfg *lease.Config) error {
		if err := backends.ValidateOptions(cfg); err != nil {
			return err
		}
		return notOnUnderlay(cfg, ext)
	})
	if err != nil {
		return err
	}
	backend, err := backends.New(backends.Env{Config: cfg, External: ext, PublicIP: publicIP, Log: log, KeyFile: o.keyFile,
		Kernel: netutil.NewNetlink(nil, &obs.calls), Calls: &obs.calls})
	if err != nil {
		return err
	}
	obs.mu.Lock()
	obs.backend, obs.btype = backend, cfg.Backend.Type
	obs.mu.Unlock()
	if err := backend.Setup(ctx); err != nil {
		return fmt.Errorf("setting up the %s backend: %w", cfg.Backend.Type, err)
	}
	defer func() {
		if o.cleanupOnExit {
			log.Info("removing weft's data path (-cleanup-on-exit)")
			if err := backend.Cleanup(context.Background()); err != nil {
				log.Error("cleanup", "err", err)
			}
		} else {
			log.Info("leaving the data path in place; traffic keeps flowing until weftd is back")
		}
		backend.Close()
	}()

	req := lease.ClaimRequest{
		Config:   cfg,
		Attrs:    lease.Attrs{PublicIP: publicIP, BackendType: lease.OwnBackendType(cfg.Backend.Type), BackendData: backend.BackendData()},
		Previous: previousSubnet(o.subnetFile, cfg, log),
		TTL:      o.leaseTTL,
	}
	own, err := claimWithRetry(ctx, store, req, log)
	if err != nil {
		return err
	}
	log.Info("subnet leased", "subnet", own.Subnet, "public_ip", publicIP, "backend", cfg.Backend.Type, "ttl", o.leaseTTL)

	writeEnv := func(l lease.Lease) {
		env := lease.SubnetEnv{Network: cfg.Network, Subnet: l.Subnet, MTU: backend.MTU(), IPMasq: o.ipMasq}
		if err := lease.WriteSubnetFile(o.subnetFile, env); err != nil {
			log.Error("writing the subnet file", "path", o.subnetFile, "err", err)
		}
	}
	writeEnv(own)
	if err := enableIPForward(); err != nil {
		log.Warn("cannot turn on net.ipv4.ip_forward; forwarded traffic will be dropped", "err", err)
	}

	watcher := lease.NewWatcher(store, log)
	holder := lease.NewHolder(store, req, own, o.renewMargin, log)
	reconciler := &mesh.Reconciler{
		Config: cfg, Leases: watcher, Own: holder, Backend: backend, Resync: o.resync, Log: log,
		OnOwnLeaseChange: writeEnv,
		OnReconcile:      func(d time.Duration, _ error) { obs.duration.Observe(d.Seconds()) },
		OnApplied: func(self lease.Lease, peers int) {
			if obs.ready.CompareAndSwap(false, true) {
				log.Info("ready", "subnet", self.Subnet, "peers", peers)
				if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
					log.Warn("sd_notify READY failed", "err", err)
				}
			}
		},
	}
	if reloader, ok := backend.(backends.KeyReloader); ok {
		g.Go(func() error { return watchKey(ctx, reloader, holder, req.Attrs, log) })
	}
	obs.mu.Lock()
	obs.reconciler, obs.watcher, obs.holder = reconciler, watcher, holder
	obs.mu.Unlock()
	if o.ipMasq || o.forwardRules {
		keeper, err := firewall.NewKeeper(o.ipMasq, o.forwardRules, time.Duration(o.iptablesSync)*time.Second, log)
		switch {
		case err != nil && o.ipMasq:
			return fmt.Errorf("-ip-masq: %w; install iptables or drop -ip-masq", err)
		case err != nil:
			log.Warn("no iptables: forwarded traffic depends on the FORWARD policy (-iptables-forward-rules=false silences this)", "err", err)
		default:
			obs.mu.Lock()
			obs.masq, obs.forward = o.ipMasq, o.forwardRules
			obs.mu.Unlock()
			g.Go(func() error {
				return keeper.Run(ctx, cfg.Network, func() netip.Prefix { return holder.Current().Subnet })
			})
		}
	}
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

// keyCheckInterval is how often weftd looks for a key rotated on disk.
const keyCheckInterval = 2 * time.Second

// watchKey rotates the key on SIGHUP and adopts a key changed on disk
// (`weftctl keys rotate`), then republishes the lease so peers follow.
func watchKey(ctx context.Context, r backends.KeyReloader, holder *lease.Holder, attrs lease.Attrs, log *slog.Logger) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ticker := time.NewTicker(keyCheckInterval)
	defer ticker.Stop()
	lastErr := ""
	for {
		rotate := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-hup:
			rotate = true
		case <-ticker.C:
		}
		changed, err := r.ReloadKey(rotate)
		if err != nil {
			// Keep the key in use; a broken file must not cut traffic.
			if err.Error() != lastErr {
				log.Error("cannot use the key file; keeping the current key", "err", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		if changed {
			attrs.BackendData = r.BackendData()
			holder.SetAttrs(attrs)
		}
	}
}

// waitForConfig polls <prefix>/config until it exists and is valid. While
// it waits it changes nothing on the host and says, once per back-off step,
// what it waits for.
func waitForConfig(ctx context.Context, store *lease.EtcdStore, log *slog.Logger, check func(*lease.Config) error) (*lease.Config, error) {
	key := store.Prefix() + "/config"
	backoff := lease.NewBackoff(time.Second, 30*time.Second)
	for {
		raw, err := store.Config(ctx)
		if err == nil {
			cfg, perr := lease.ParseConfig(raw)
			if perr == nil {
				perr = check(cfg)
			}
			if perr == nil {
				if cfg.BackendDefaulted {
					log.Warn(`network config has no Backend.Type; using "udp" as flannel does. For an encrypted mesh set "Backend": {"Type": "wireguard"}`, "key", key)
				}
				log.Info("network config loaded", "key", key, "network", cfg.Network, "subnet_len", cfg.SubnetLen, "backend", cfg.Backend.Type)
				return cfg, nil
			}
			err = perr
		}
		delay := backoff.Next()
		switch {
		case errors.Is(err, lease.ErrNoConfig):
			log.Warn("waiting for the network config; put it with `weftctl config put` or etcdctl", "key", key, "retry_in", delay)
		case errors.Is(err, lease.ErrInvalidConfig):
			log.Error("network config is invalid; waiting for a fixed one", "key", key, "err", err, "retry_in", delay)
		default:
			if cause := store.Diagnose(ctx); cause != nil {
				err = cause
			}
			log.Warn("waiting for etcd", "endpoints", store.Endpoints(), "err", err, "retry_in", delay)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// notOnUnderlay refuses a Network that overlaps the external interface's
// own networks: routing the Network through the overlay would cut this
// host off from its peers.
func notOnUnderlay(cfg *lease.Config, ext netutil.ExternalInterface) error {
	for _, p := range ext.Prefixes {
		if p.Overlaps(cfg.Network) {
			return fmt.Errorf(`%w: key "Network": %s overlaps %s on %s, the underlay between hosts; choose a Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.Network, p, ext.Name)
		}
	}
	return nil
}

// claimWithRetry claims a subnet, waiting out etcd outages and a full pool.
func claimWithRetry(ctx context.Context, store lease.Store, req lease.ClaimRequest, log *slog.Logger) (lease.Lease, error) {
	backoff := lease.NewBackoff(time.Second, 30*time.Second)
	for {
		l, err := lease.Claim(ctx, store, req)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return lease.Lease{}, ctx.Err()
		}
		delay := backoff.Next()
		log.Error("cannot lease a subnet yet; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return lease.Lease{}, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// previousSubnet reads FLANNEL_SUBNET from an earlier run's subnet file, so
// a host whose lease vanished from etcd (etcd wiped) gets the same subnet
// and its containers keep their addresses.
func previousSubnet(path string, cfg *lease.Config, log *slog.Logger) netip.Prefix {
	env, err := lease.ReadSubnetFile(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("ignoring unreadable subnet file", "path", path, "err", err)
		}
		return netip.Prefix{}
	}
	if !cfg.Fits(env.Subnet) {
		log.Info("previous subnet does not fit the network config; a new one will be leased", "previous", env.Subnet)
		return netip.Prefix{}
	}
	return env.Subnet
}

func enableIPForward() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	return os.WriteFile(path, []byte("1\n"), 0o644)
}

// serveHealth serves /healthz (alive), /readyz (data path programmed),
// /status and /metrics on -healthz-ip (loopback by default).
func serveHealth(o *options, obs *observer) (*http.Server, error) {
	addr := net.JoinHostPort(o.healthzIP, strconv.Itoa(o.healthzPort))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health endpoint on %s (-healthz-ip, -healthz-port): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	obs.handlers(mux)
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return srv, nil
}
