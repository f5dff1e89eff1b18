package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/liveswitch"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// This host's lease: claiming it, what it publishes, the subnet file
// written from it, and what follows it (a rotated key, the config's
// Backend.Type).

// claimLease claims this host's subnet with attrs (the one it held before
// when still free), retrying until etcd answers, and logs it.
func claimLease(ctx context.Context, store lease.Store, o *options, cfg *lease.Config, attrs lease.Attrs, self hostFacts,
	members *members, log *slog.Logger) (lease.ClaimRequest, lease.Lease, error) {
	req := lease.ClaimRequest{
		Config:        cfg,
		Attrs:         attrs,
		Previous:      lease.PreviousSubnet(o.subnetFile, cfg, log),
		PreviousIPv6:  lease.PreviousIPv6Subnet(o.subnetFile, cfg),
		TTL:           o.leaseTTL,
		HostIDFile:    keys.HostIDPath(o.keyFile),
		Identity:      self.identity,
		AdoptUnsigned: self.newIdentity,
	}
	members.start(ctx, self, &req, log)
	own, err := lease.ClaimWithRetry(ctx, store, req, lease.DefaultStartupRetry(), log)
	if err != nil {
		return req, own, err
	}
	log.Info("subnet leased", "subnet", own.Subnet, "public_ip", attrs.PublicIP, "backend", cfg.Backend.Type, "ttl",
		o.leaseTTL)
	if own.IPv6Subnet.IsValid() {
		log.Info("IPv6 subnet leased", "subnet", own.IPv6Subnet, "public_ipv6", attrs.PublicIPv6Addr())
	}
	return req, own, nil
}

// loadIdentity reads this host's identity (the key its lease is signed
// with) from beside the key file, making it at the first start. One made
// under another machine ID is a copy (a cloned disk or image): a new
// identity replaces it, and the host ID goes too, so this host claims a
// subnet of its own instead of taking the original's lease.
func loadIdentity(o *options, log *slog.Logger) (keys.Identity, bool, error) {
	path := keys.IdentityPath(o.keyFile)
	id, state, err := keys.LoadOrCreateIdentity(path, keys.ReadMachineID(o.machineIDFile))
	if err != nil {
		return id, false, fmt.Errorf("this host's identity: %w", err)
	}
	switch state {
	case keys.IdentityCreated:
		log.Info("created this host's identity: its lease is signed with it", "public_key", id.Public(), "file", path)
	case keys.IdentityCloned:
		// The copy's host ID and WireGuard key are the original's too:
		// with them it would take the original's lease, or publish its
		// key twice (every host then skips both). New ones are made.
		for _, copied := range []string{keys.HostIDPath(o.keyFile), o.keyFile} {
			if err := os.Remove(copied); err != nil && !os.IsNotExist(err) {
				return id, false, fmt.Errorf("removing the copied %s: %w", copied, err)
			}
		}
		log.Warn("this host's identity was made on another machine (a cloned disk or image?); made a new identity, host ID "+
			"and WireGuard key: this host claims a subnet of its own", "machine_id_file", o.machineIDFile,
			"public_key", id.Public(), "file", path)
	default:
		log.Info("loaded this host's identity", "public_key", id.Public(), "file", path)
	}
	return id, state == keys.IdentityCreated, nil
}

// loadHostID reads this host's ID from beside the key file, making it at
// the first start.
func loadHostID(o *options, log *slog.Logger) (keys.HostID, error) {
	path := keys.HostIDPath(o.keyFile)
	id, created, err := keys.LoadOrCreateHostID(path)
	if err != nil {
		return id, fmt.Errorf("the host ID: %w", err)
	}
	if created {
		log.Info("created this host's ID: its lease is recognised by it when its address changes", "host_id", id, "file",
			path)
	} else {
		log.Info("loaded this host's ID", "host_id", id, "file", path)
	}
	return id, nil
}

// ownAttrs is what this host's lease publishes: its addresses (the IPv6
// one on a dual-stack network), its backend and the backend's data for each
// family, and its host ID.
//
// During a switch the lease shows the backend its peers knew (plan's
// visible one) and names the others in WeftAlso, the new one only once
// it can answer (liveswitch.Keeper).
func ownAttrs(cfg *lease.Config, self hostFacts, backend backends.Backend, plan liveswitch.Plan) lease.Attrs {
	attrs := self.attrs()
	attrs.BackendType, attrs.BackendData = cfg.Backend.LeaseType(), backend.BackendData()
	if publicIP6 := self.publicIP6; publicIP6.IsValid() {
		attrs.PublicIPv6 = &publicIP6
		if b, ok := backends.As[backends.DualStack](backend); ok {
			attrs = attrs.WithBackendV6Data(b.BackendV6Data())
		}
	}
	if s, ok := backend.(*liveswitch.Switching); ok {
		return liveswitch.Attrs(attrs, s.Paths(), plan.Visible, false)
	}
	return attrs
}

// subnetFileWriter returns what writes the subnet file for a lease: now,
// and again whenever the lease is re-claimed under another subnet. A
// subnet other than the one the file held means docker runs with a --bip
// outside this host's lease: that is said loudly, with what to do.
func subnetFileWriter(path string, cfg *lease.Config, mtu int, ipMasq bool, log *slog.Logger) func(lease.Lease) {
	return func(l lease.Lease) {
		if old, err := lease.ReadSubnetFile(path); err == nil && old.Subnet.IsValid() && old.Subnet != l.Subnet {
			log.Warn("this host's subnet changed (its lease was lost and the subnet taken): "+
				"docker still uses the old one for --bip, "+
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

// keyCheckInterval is how often weftd looks for a key rotated on disk.
const keyCheckInterval = 2 * time.Second

// watchKey rotates the key on SIGHUP and adopts a key changed on disk
// (`weftctl keys rotate`), then republishes the lease so peers follow.
func watchKey(ctx context.Context, r backends.KeyReloader, holder *lease.Holder, attrs lease.Attrs,
	log *slog.Logger) error {
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
			if d, ok := backends.As[backends.DualStack](r); ok && attrs.PublicIPv6 != nil {
				attrs = attrs.WithBackendV6Data(d.BackendV6Data())
			}
			holder.SetAttrs(attrs)
		}
	}
}

// watchBackendType follows the network config's Backend object: when it
// asks for another Backend.Type or other options, it records the type
// (latest) and ends the run with errSwitch, so weftd runs again at once
// and switches live. A change of StrictEncryption or EnableNFTables is
// taken up the same way. A config that does not validate is waited out.
//
// The store's watch of the config key wakes it within a second of a
// write; the read every resync interval is the safety net for a watch
// that missed one.
func watchBackendType(ctx context.Context, store lease.Store, runningCfg *lease.Config, every time.Duration,
	latest *atomic.Pointer[string], guard *configGuard, log *slog.Logger) error {
	running := runningCfg.Backend
	bad := ""
	written := store.WatchConfig(ctx)
	resync := time.NewTicker(every)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-resync.C:
		case _, open := <-written:
			if !open {
				written = nil // ctx ended: the case above returns
			}
		}
		raw, err := store.Config(ctx)
		if err != nil {
			continue
		}
		cfg, err := lease.ParseConfig(raw)
		note := ""
		if err == nil {
			// The pin first: what this host runs is what must validate.
			if pinned, overridden := guard.pin(cfg); len(overridden) > 0 {
				cfg, note = pinned, refusedNote(overridden)
			}
			err = backends.CheckConfig(cfg)
		}
		if err == nil {
			err = backends.ValidateOptions(cfg)
		}
		if err != nil {
			if err.Error() != bad {
				log.Warn("the network config changed but does not validate; keeping the running backend", "err", err)
				bad = err.Error()
			}
			continue
		}
		bad = ""
		if cfg.Backend.Type == running.Type &&
			liveswitch.CompactJSON(cfg.Backend.Raw) == liveswitch.CompactJSON(running.Raw) &&
			cfg.StrictEncryption == runningCfg.StrictEncryption && cfg.EnableNFTables == runningCfg.EnableNFTables {
			guard.say(note, log)
			continue
		}
		if deferred := deferredNote(running, cfg); deferred != "" {
			guard.say(deferred, log)
			continue
		}
		latest.Store(&cfg.Backend.Type)
		var changed []string
		if cfg.Backend.Type == running.Type {
			changed = liveswitch.ChangedOptions(running.Raw, cfg.Backend.Raw)
		}
		log.Info("the network config changed: taking it up live", "running", running.Type, "config", cfg.Backend.Type,
			"options_changed", changed, "strict_encryption", cfg.StrictEncryption, "nftables", cfg.EnableNFTables)
		liveswitch.LogOptionGaps(running.Type, changed, log)
		return errSwitch
	}
}
