package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Apply brings the device to the desired state: key, port, one peer per
// valid lease (per-peer deltas only), address, MTU, and the Network route.
// It reads the device (making it again when it went away), plans the
// whole apply (planWhole, pure), then writes the plan.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.link.dev == nil {
		return errors.New("wireguard backend used before Setup")
	}
	b.last.ok = false
	current, err := b.readOrRecreate()
	if err != nil {
		return err
	}
	p := planWhole(d, wholeInput{key: b.id.key, opts: b.cfg.opts, userspace: b.link.dev.kind == ImplUserspace,
		current: current, lastEndpoints: b.last.leaseEndpoints, now: time.Now()})
	errs := b.write(p, d.Self, len(d.Peers))
	b.last.ok = len(errs) == 0
	return errors.Join(errs...)
}

// write carries out a whole plan: what the hosts' sightings say is taken
// up, the device configured in one call, the on-demand table and mode
// set, handshakes started, the device's addresses and routes and
// DirectRouting's routes made. It returns every error and goes on after
// each, but for a failed configuration of the device.
func (b *Backend) write(p wholePlan, self lease.Lease, leases int) []error {
	errs := p.problems
	b.found.note(p.found, self, b.log)
	b.found.noteNotEager(p.notEager, b.log)
	b.setRelaying(p.relaying, self.Attrs.PublicIP)
	b.last.want = p.peers
	b.peers.setWanted(p.peers)
	b.peers.setIdentity(b.id.key)
	b.warnMixedFamilies(p.device.configured)
	if c := p.device.config; c.PrivateKey != nil || c.ListenPort != nil || len(c.Peers) > 0 {
		if err := b.link.configure(c); err != nil {
			return append(errs, fmt.Errorf("configuring %s: %w", b.link.name, err))
		}
		b.logChanges(p.device.changes)
	}
	b.last.holders = p.holders
	b.last.leaseEndpoints = p.device.leaseEndpoints
	b.peers.setConfigured(specKeys(p.device.configured))
	// Only now, with the port set: a port change waits for the receive
	// goroutines, which must not be activating peers meanwhile.
	b.setOnDemand(p.onDemand, leases)
	if err := b.kick(p.device.kick); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, netkernel.EnsureTunnelLinkFor(b.kernel, b.link.name, b.cfg.deviceMTU().device, p.halves)...)
	return append(errs, b.syncDirect(nil, p.direct, p.ipv6, true)...)
}

// readOrRecreate reads the device; one that went away (deleted by hand)
// is made again first.
func (b *Backend) readOrRecreate() (*wgtypes.Device, error) {
	current, err := b.link.read()
	if err == nil {
		return current, nil
	}
	b.log.Warn("WireGuard device missing; recreating it", "err", err)
	b.link.dev.close()
	if b.link.dev, err = b.open(); err != nil {
		return nil, err
	}
	if current, err = b.link.read(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", b.link.name, err)
	}
	return current, nil
}

// ApplyDelta changes only the peers in the delta, in one ConfigureDevice
// call, without reading the device: its cost does not grow with the
// number of peers. A delta that touches a key another lease also
// publishes, or comes before a whole apply succeeded (start, rotated
// key), returns mesh.ErrWholeApply.
func (b *Backend) ApplyDelta(_ context.Context, d mesh.Delta) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	// A peer that says it is behind NAT counts towards the bound on eager
	// peers, which only the whole set decides (capEager).
	if !b.last.ok || changesSightings(d) || len(b.found.now.relays) > 0 || slices.ContainsFunc(d.New, claimsNAT) {
		return mesh.ErrWholeApply
	}
	self := b.id.key.Public()
	before, _ := candidates(d.Before(), self, b.cfg.opts, b.found.now)
	after, errs := candidates(d.After(), self, b.cfg.opts, b.found.now)
	if !deltaStandsAlone(before, after, b.last.holders) {
		return mesh.ErrWholeApply
	}
	b.peers.update(before, after)
	held, heldAfter := before, after
	if b.peers.on() {
		// Only peers the device holds are touched; a new one waits for
		// traffic, one that left or changed key is removed if held.
		held, heldAfter = b.peers.configuredOf(before), b.peers.configuredOf(after)
	}
	have := make([]PeerState, 0, len(held))
	for _, c := range held {
		have = append(have, c.state())
	}
	changes := PeerChanges(have, heldAfter)
	if len(changes) > 0 {
		cfg := wgtypes.Config{}
		for _, c := range changes {
			cfg.Peers = append(cfg.Peers, toPeerConfig(c))
		}
		if err := b.link.configure(cfg); err != nil {
			// The device may be gone (deleted by hand): a whole apply
			// recreates it and refills every peer.
			b.last.ok = false
			b.log.Warn("configuring the device failed; applying the whole state", "err", err)
			return mesh.ErrWholeApply
		}
		b.logChanges(changes)
	}
	var removed []keys.Key
	for _, c := range changes {
		if c.Remove {
			removed = append(removed, c.PublicKey)
		}
	}
	b.peers.markRemoved(removed)
	if b.last.leaseEndpoints == nil {
		b.last.leaseEndpoints = map[keys.Key]netip.AddrPort{}
	}
	for _, c := range before {
		delete(b.last.holders, c.PublicKey)
		delete(b.last.leaseEndpoints, c.PublicKey)
	}
	for _, c := range after {
		b.last.holders[c.PublicKey] = []string{c.Lease}
		b.last.leaseEndpoints[c.PublicKey] = c.leaseEndpoint()
	}
	if err := b.kick(peersToKick(have, heldAfter, changes, false)); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, b.syncDirect(DirectRoutes(d.Before(), b.cfg.opts), DirectRoutes(d.After(), b.cfg.opts), d.Network.Addr().Is6(), false)...)
	return errors.Join(errs...)
}

// syncDirect makes DirectRouting's plain routes via the external interface
// want: compared with the kernel's of the desired state's family (ipv6;
// the other family's belong to the other device of a dual-stack network)
// on a whole apply (dump), or with before, what the last apply put there
// (a delta).
func (b *Backend) syncDirect(before, want []underlay.Route, ipv6, dump bool) []error {
	if !b.cfg.opts.DirectRouting {
		return nil
	}
	var current map[netip.Prefix]netkernel.Hop
	if dump {
		var err error
		if current, err = netkernel.PeerRoutes(b.kernel, ipv6, -1, b.cfg.ext.Index); err != nil {
			return []error{err}
		}
	} else {
		current = netkernel.PlannedRoutes(-1, b.cfg.ext.Index, before)
	}
	return netkernel.SyncPeerRoutes(b.kernel, -1, b.cfg.ext.Index, current, want, b.log.With("dev", b.cfg.ext.Name))
}

// open creates or adopts the device; the on-demand table configures its
// peers in process when it is wireguard-go.
func (b *Backend) open() (*wgDevice, error) {
	dev, err := openDevice(b.kernel, b.link.name, b.cfg.opts, b.cfg.deviceMTU(), b.peers, b.log)
	if err != nil {
		return nil, err
	}
	b.peers.setConfigure(dev.addPeer)
	return dev, nil
}

// setOnDemand turns the on-demand mode on or off, and says so when that
// changes.
func (b *Backend) setOnDemand(on bool, peers int) {
	if b.peers.setOn(on) {
		b.log.Info("on-demand peers", "on", on, "peers", peers, "mode", b.cfg.opts.OnDemandPeers, "idle_after", b.cfg.opts.OnDemandIdleAfter)
	}
}

// kick makes WireGuard start a handshake with peers now. Turning persistent
// keepalive on sends a keepalive at once (kernel and wireguard-go alike),
// and without a session that starts a handshake. Without it, a restarted
// receiver stays silent while its sender keeps using a dead session until
// its rekey timeout: about 25 s without traffic.
//
// The keepalive waits in the peer's queue until a handshake completes, and
// wireguard-go gives each queued packet a 64 KiB buffer: kicking every
// peer of a large cluster at once (a restart with 10,000 peers) would hold
// 640 MB until they answer, for ever-unreachable ones about 90 s. So at
// most maxKick peers are kicked per apply; the others handshake on their
// first packet either way, and the remote side re-handshakes within its
// keepalive and rekey timeouts (about 15 s when it sends).
func (b *Backend) kick(peers []PeerSpec) error {
	if len(peers) == 0 {
		return nil
	}
	if len(peers) > maxKick {
		b.log.Info("starting handshakes with a part of the new peers now; the rest handshake on their first packet",
			"new_peers", len(peers), "kicked", maxKick)
		peers = peers[:maxKick]
	}
	// The last round gives each peer its own keepalive back (the config's,
	// or an outside or NAT peer's).
	for round := range 3 {
		cfg := wgtypes.Config{}
		for _, p := range peers {
			interval := []time.Duration{0, time.Second, p.Keepalive}[round]
			cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), UpdateOnly: true, PersistentKeepaliveInterval: &interval})
		}
		if err := b.link.configure(cfg); err != nil {
			return fmt.Errorf("starting handshakes on %s: %w", b.link.name, err)
		}
	}
	return nil
}

// warnMixedFamilies warns, once each time it begins, that a userspace
// device reaches peers at endpoints of both families (see MixedFamilies).
func (b *Backend) warnMixedFamilies(want []PeerSpec) {
	v6 := MixedFamilies(want)
	if b.link.dev.kind != ImplUserspace || len(v6) == 0 {
		b.last.mixedWarned = false
		return
	}
	if !b.last.mixedWarned {
		b.log.Warn("wireguard-go loses packets to IPv6 endpoints on a device that also sends to IPv4 ones (a bug of its UDP bind); "+
			`use kernel WireGuard ("Implementation":"kernel"), or give these peers IPv4 endpoints ("Mode":"ipv4" or "separate")`,
			"device", b.link.name, "ipv6_endpoints", strings.Join(v6, ","))
		b.last.mixedWarned = true
	}
}

func (b *Backend) logChanges(changes []Change) {
	for _, c := range changes {
		if c.Remove {
			b.log.Info("peer removed", "public_key", keys.Key(c.PublicKey), "lease", strings.Join(b.last.holders[c.PublicKey], ","))
			continue
		}
		b.log.Info("peer set", "lease", c.Spec.Lease, "public_key", c.PublicKey, "endpoint", c.Spec.Endpoint)
	}
}
