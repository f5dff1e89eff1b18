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
	"sync/atomic"
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

// run is weftd from connecting to etcd to shutdown, step by step as the
// design lays it out. It returns nil on a clean stop; it never returns
// because a lease was lost or etcd went away.
func run(ctx context.Context, o *options, log *slog.Logger) error {
	store, err := lease.NewEtcdStore(o.etcd)
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
	if o.behindNAT && cfg.Backend.Type != lease.BackendWireGuard {
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
		outside := newOutsidePeers(store, log)
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

// hostAddresses settles this host's addresses on the network cfg
// describes: its PublicIP (0.0.0.0 on an IPv6-only network, as flannel
// writes it; an error when the config carries IPv4 and the interface has
// none), its PublicIPv6 on a dual-stack network, and whether it may route
// PeersNetwork (not when its own address or an etcd endpoint lies inside:
// cfg loses PeersNetwork then, and the log says why).
func hostAddresses(o *options, cfg *lease.Config, ext netutil.ExternalInterface, publicIP netip.Addr, log *slog.Logger) (netip.Addr, netip.Addr, error) {
	if why := peersNetworkConflict(cfg.PeersNetwork, hostAddrs(), o.etcd.Endpoints); why != "" {
		log.Error("not routing PeersNetwork on this host: outside peers cannot reach it; choose a PeersNetwork no host or etcd address uses", "reason", why)
		cfg.PeersNetwork = netip.Prefix{}
	}
	switch {
	case !cfg.EnableIPv4:
		publicIP = netip.IPv4Unspecified() // an IPv6-only lease's, as flannel writes it
	case !publicIP.IsValid():
		return publicIP, netip.Addr{}, fmt.Errorf("interface %s has no global IPv4 address, and the network config carries IPv4; give it one, pick another interface with -iface, or set -public-ip", ext.Name)
	}
	if !cfg.EnableIPv6 {
		return publicIP, netip.Addr{}, nil
	}
	publicIP6, err := publicIPv6(o, ext)
	if err == nil {
		log.Info("dual stack: IPv6 underlay address chosen", "public_ipv6", publicIP6, "iface", ext.Name)
	}
	return publicIP, publicIP6, err
}

// claimLease claims this host's subnet with attrs (the one it held before
// when still free), retrying until etcd answers, and logs it.
func claimLease(ctx context.Context, store lease.Store, o *options, cfg *lease.Config, attrs lease.Attrs, log *slog.Logger) (lease.ClaimRequest, lease.Lease, error) {
	req := lease.ClaimRequest{
		Config:    cfg,
		Attrs:     attrs,
		Previous:  lease.PreviousSubnet(o.subnetFile, cfg, log),
		Previous6: lease.PreviousIPv6Subnet(o.subnetFile, cfg),
		TTL:       o.leaseTTL,
	}
	own, err := lease.ClaimWithRetry(ctx, store, req, lease.DefaultStartupRetry(), log)
	if err != nil {
		return req, own, err
	}
	log.Info("subnet leased", "subnet", own.Subnet, "public_ip", attrs.PublicIP, "backend", cfg.Backend.Type, "ttl", o.leaseTTL)
	if own.IPv6Subnet.IsValid() {
		log.Info("IPv6 subnet leased", "subnet", own.IPv6Subnet, "public_ipv6", attrs.PublicIPv6Addr())
	}
	return req, own, nil
}

// turnOnForwarding turns on IP forwarding for each family the network
// carries; without it the kernel drops what the overlay forwards.
func turnOnForwarding(cfg *lease.Config, log *slog.Logger) {
	if err := enableForwarding("/proc/sys/net/ipv4/ip_forward"); err != nil {
		log.Warn("cannot turn on net.ipv4.ip_forward; forwarded traffic will be dropped", "err", err)
	}
	if cfg.EnableIPv6 {
		if err := enableForwarding("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			log.Warn("cannot turn on net.ipv6.conf.all.forwarding; forwarded IPv6 traffic will be dropped", "err", err)
		}
	}
}

// keepBlackholes keeps -ip-blackhole-route's route for each half of the
// lease, as flannel adds one per family.
func keepBlackholes(ctx context.Context, g *errgroup.Group, o *options, cfg *lease.Config, kernel netutil.Kernel, holder *lease.Holder, log *slog.Logger) {
	every := time.Duration(o.iptablesSync) * time.Second
	if cfg.EnableIPv4 {
		g.Go(func() error {
			return keepBlackhole(ctx, kernel, func() netip.Prefix { return holder.Current().Subnet }, every, log)
		})
	}
	if cfg.EnableIPv6 {
		g.Go(func() error {
			return keepBlackhole(ctx, kernel, func() netip.Prefix { return holder.Current().IPv6Subnet }, every, log)
		})
	}
}

// ownAttrs is what this host's lease publishes: its addresses (the IPv6
// one on a dual-stack network), its backend and the backend's data for each
// family.
func ownAttrs(cfg *lease.Config, publicIP, publicIP6 netip.Addr, backend backends.Backend) lease.Attrs {
	attrs := lease.Attrs{PublicIP: publicIP, BackendType: lease.OwnBackendType(cfg.Backend.Type), BackendData: backend.BackendData()}
	if publicIP6.IsValid() {
		attrs.PublicIPv6 = &publicIP6
		if b, ok := backend.(backends.DualStack); ok {
			attrs.BackendV6Data = b.BackendV6Data()
		}
	}
	return attrs
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

// subnetFileWriter returns what writes the subnet file for a lease: now,
// and again whenever the lease is re-claimed under another subnet. A
// subnet other than the one the file held means docker runs with a --bip
// outside this host's lease: that is said loudly, with what to do.
func subnetFileWriter(path string, cfg *lease.Config, mtu int, ipMasq bool, log *slog.Logger) func(lease.Lease) {
	return func(l lease.Lease) {
		if old, err := lease.ReadSubnetFile(path); err == nil && old.Subnet.IsValid() && old.Subnet != l.Subnet {
			log.Warn("this host's subnet changed (its lease was lost and the subnet taken): docker still uses the old one for --bip, "+
				"so its containers are unreachable; run `weftctl docker-opts` and restart docker (systemctl restart docker)",
				"previous", old.Subnet, "subnet", l.Subnet, "subnet_file", path)
		}
		env := lease.SubnetEnv{Network: cfg.Network, Subnet: l.Subnet, MTU: mtu, IPMasq: ipMasq}
		if l.IPv6Subnet.IsValid() {
			env.IPv6Network, env.IPv6Subnet = cfg.IPv6Network, l.IPv6Subnet
		}
		if err := lease.WriteSubnetFile(path, env); err != nil {
			log.Error("writing the subnet file", "path", path, "err", err)
		}
	}
}

// watchBackendType says, once per change, when the network config asks
// for another Backend.Type than the one running: it takes effect at
// weftd's next start (a switch needs the old data path removed first).
func watchBackendType(ctx context.Context, store lease.Store, running string, every time.Duration, latest *atomic.Pointer[string], log *slog.Logger) error {
	said := running
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
		raw, err := store.Config(ctx)
		if err != nil {
			continue
		}
		cfg, err := lease.ParseConfig(raw)
		if err != nil || cfg.Backend.Type == said {
			continue
		}
		said = cfg.Backend.Type
		latest.Store(&said)
		if said != running {
			log.Warn("the network config now asks for another backend; it takes effect when weftd restarts (systemctl restart weftd)",
				"running", running, "config", said)
		}
	}
}

// keepBlackhole keeps the blackhole route for this host's subnet of one
// family (-ip-blackhole-route), checked every interval as flannel does, and
// moves it when the lease moves to another subnet.
func keepBlackhole(ctx context.Context, kernel netutil.Kernel, current func() netip.Prefix, interval time.Duration, log *slog.Logger) error {
	var previous netip.Prefix
	lastErr := ""
	for {
		// No subnet of this family yet (a lease gaining its IPv6 half):
		// nothing to keep until the next check.
		if subnet := current(); subnet.IsValid() {
			if err := netutil.EnsureBlackhole(kernel, subnet, previous); err != nil {
				if err.Error() != lastErr {
					log.Error("blackhole route; retrying", "subnet", subnet, "err", err)
				}
				lastErr = err.Error()
			} else {
				previous, lastErr = subnet, ""
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// keepFirewall starts keeping weft's iptables chains when -ip-masq or
// -iptables-forward-rules asks for them, and the same chains in ip6tables
// for the IPv6 half of a dual-stack network. Without iptables, -ip-masq is
// an error; forward rules only a warning.
func keepFirewall(ctx context.Context, g *errgroup.Group, o *options, cfg *lease.Config, holder *lease.Holder, overlay []string, obs *observer, log *slog.Logger) error {
	// The other mode's rules go first, as flannel cleans up the traffic
	// manager it does not use at every start: after a switch of
	// "EnableNFTables" nothing of the old mode is left to act twice.
	other, mode := firewall.NFTCleanup, "iptables"
	if cfg.EnableNFTables {
		other, mode = firewall.IPTablesCleanup, "nftables"
	}
	removed, err := other()
	for _, r := range removed {
		log.Info("removed the other firewall mode's rules", "removed", r, "mode", mode)
	}
	if err != nil {
		log.Warn("removing the other firewall mode's rules", "err", err, "mode", mode)
	}
	if !o.ipMasq && !o.forwardRules {
		return nil
	}
	type family struct {
		ipv6    bool
		network netip.Prefix
		subnet  func() netip.Prefix
	}
	peers := cfg.PeersNetwork
	var families []family
	if cfg.EnableIPv4 {
		families = append(families, family{false, cfg.Network, func() netip.Prefix { return holder.Current().Subnet }})
	}
	if cfg.EnableIPv6 {
		families = append(families, family{true, cfg.IPv6Network, func() netip.Prefix { return holder.Current().IPv6Subnet }})
	}
	for _, f := range families {
		settings := firewall.Settings{Masq: o.ipMasq, Forward: o.forwardRules, IPv6: f.ipv6,
			RandomFullyDisable: o.randomFullyDisable, Resync: time.Duration(o.iptablesSync) * time.Second}
		if !f.ipv6 {
			settings.PeersNetwork = peers
		}
		settings.Overlay = overlay
		var keeper interface {
			Run(ctx context.Context, network netip.Prefix, subnet func() netip.Prefix) error
		}
		if cfg.EnableNFTables {
			keeper, err = firewall.NewNFTKeeper(settings, log)
		} else {
			keeper, err = firewall.NewKeeper(settings, log)
		}
		switch {
		case err != nil && o.ipMasq && cfg.EnableNFTables:
			return fmt.Errorf(`-ip-masq: %w; the config asks for nftables ("EnableNFTables": true): use a kernel with nf_tables, or drop the key to use iptables`, err)
		case err != nil && o.ipMasq:
			return fmt.Errorf("-ip-masq: %w; install it or drop -ip-masq", err)
		case err != nil:
			log.Warn("no "+mode+": forwarded traffic depends on the FORWARD policy (-iptables-forward-rules=false silences this)", "err", err)
			return nil
		}
		g.Go(func() error { return keeper.Run(ctx, f.network, f.subnet) })
	}
	obs.setFirewall(o.ipMasq, o.forwardRules)
	return nil
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
			if d, ok := r.(backends.DualStack); ok && attrs.PublicIPv6 != nil {
				attrs.BackendV6Data = d.BackendV6Data()
			}
			holder.SetAttrs(attrs)
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
		if cfg.EnableIPv6 && p.Overlaps(cfg.IPv6Network) {
			return fmt.Errorf(`%w: key "IPv6Network": %s overlaps %s on %s, the underlay between hosts; choose an IPv6Network no host interface uses`,
				lease.ErrInvalidConfig, cfg.IPv6Network, p, ext.Name)
		}
	}
	return nil
}

// enableForwarding turns on the forwarding sysctl at path (IPv4's or
// IPv6's), writing only when it is off.
func enableForwarding(path string) error {
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	return os.WriteFile(path, []byte("1\n"), 0o644)
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
