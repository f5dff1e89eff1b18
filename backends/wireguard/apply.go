package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Backend is the wireguard backend. The zero value is not usable; use New.
type Backend struct {
	// name is the device's: DeviceName, or a run-unique one in tests.
	name    string
	opts    Options
	ext     underlay.ExternalInterface
	keyFile string
	kernel  netkernel.Kernel
	calls   *netkernel.Calls
	log     *slog.Logger
	// mtu is the containers' MTU on this backend (FLANNEL_MTU); the
	// device's is deviceMTU.
	mtu int
	// carriedMTU, when larger than mtu, is the MTU containers started
	// under a previous backend may still send with (CarryMTU).
	carriedMTU int

	mu      sync.Mutex
	key     keys.Key
	dev     *wgDevice
	control Control
	// holders are the leases publishing each key in the state last
	// applied: a delta touching a key held twice needs a whole apply, and
	// log lines name the lease of a peer removed.
	holders map[keys.Key][]string
	// applied is false until a whole apply succeeded with the current
	// key: until then a delta cannot trust the device.
	applied bool
	// leaseEndpoints are the endpoints the leases named at the last whole
	// apply: an endpoint on the device that differs from an unchanged
	// lease's was roamed to by WireGuard (KeepRoamed).
	leaseEndpoints map[keys.Key]netip.AddrPort
	// peers is the on-demand table (userspace only; see ondemand.go).
	peers *onDemand
	// stopSweep ends the idle sweep; nil when none runs.
	stopSweep chan struct{}
	// want are the peers the last whole apply planned (Observe's
	// reference); rx tracks when each peer last sent something.
	want []PeerSpec
	rx   map[keys.Key]activity
	// mixedWarned: the warning of MixedFamilies was given for the peers
	// as they are; it is given again when they mix anew.
	mixedWarned bool
}

// New parses the Backend options and loads (or creates) the private key.
// Links and routes go through kernel; device reads and writes are counted
// in calls (nil: not counted). Every error names the option or file at fault.
func New(raw json.RawMessage, ext underlay.ExternalInterface, keyFile string, kernel netkernel.Kernel, calls *netkernel.Calls, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "wireguard")
	key, created, err := keys.LoadOrCreate(keyFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created a new WireGuard key", "file", keyFile, "public_key", key.Public())
	} else {
		log.Info("loaded the WireGuard key", "file", keyFile, "public_key", key.Public())
	}
	opts.localIPv4, opts.localIPv6, opts.localPrefixes = ext.Addr, ext.AddrIPv6, ext.Prefixes
	mtu := options.DeviceMTU(opts.MTU, ext.MTU, Overhead)
	return &Backend{name: DeviceName, opts: opts, ext: ext, keyFile: keyFile, kernel: kernel, calls: calls, log: log, mtu: mtu, key: key,
		peers: newOnDemand()}, nil
}

// NewIPv6 is New for the IPv6 device of Mode "separate" on a dual-stack
// network, as flannel's flannel-wg-v6: weft-wg-v6 on ListenPortV6 with
// the same key, driven with the IPv6 half of each desired state
// (mesh.Desired.IPv6Half), so its peers are the leases' IPv6 subnets at
// their PublicIPv6 and BackendV6Data's port.
func NewIPv6(raw json.RawMessage, ext underlay.ExternalInterface, keyFile string, kernel netkernel.Kernel, calls *netkernel.Calls, log *slog.Logger) (*Backend, error) {
	b, err := New(raw, ext, keyFile, kernel, calls, log.With("family", "ipv6"))
	if err != nil {
		return nil, err
	}
	b.name, b.opts.ListenPort = DeviceNameIPv6, b.opts.ListenPortV6
	return b, nil
}

// BackendV6Data is what a single-device dual-stack lease (Mode auto, ipv4,
// ipv6) publishes for its IPv6 half: the same key and the port the one
// device listens on. (flannel publishes ListenPortV6 there, where its one
// device does not listen.)
func (b *Backend) BackendV6Data() json.RawMessage { return b.BackendData() }

// Footprint is what the wireguard backend leaves on a host: the device
// (kernel link or persistent TUN) and wireguard-go's UAPI socket. The key
// file is not in it: it is this host's identity and outlives a cleanup.
func Footprint() netkernel.Footprint {
	return netkernel.Footprint{Links: []string{DeviceName, DeviceNameIPv6},
		Files: []string{"/var/run/wireguard/" + DeviceName + ".sock", "/var/run/wireguard/" + DeviceNameIPv6 + ".sock"}}
}

// OverrideImplementation replaces the config's Implementation on this host
// (weftd's -wireguard-implementation, named by from in logs and errors).
// It is called before Setup.
func (b *Backend) OverrideImplementation(impl, from string) error {
	if !ValidImplementation(impl) {
		return fmt.Errorf("%s %q is not one of auto, kernel, userspace", from, impl)
	}
	b.opts.Implementation, b.opts.ImplementationFrom = impl, from
	return nil
}

// SetBehindNAT marks this host as behind NAT (weftd's -behind-nat): its
// lease says so, and its peers get a keepalive every 25 s when the config
// sets none, which keeps the NAT's mapping open and lets peers find it.
// It is called before Setup.
func (b *Backend) SetBehindNAT() {
	b.opts.BehindNAT = true
	if b.opts.PersistentKeepalive == 0 {
		b.opts.PersistentKeepalive = natKeepalive
	}
}

// natKeepalive is the keepalive a host behind NAT sends when the config
// sets none: within the UDP mapping timeouts of common NATs (30 s and up),
// and what wg-quick's users are told to pick.
const natKeepalive = 25 * time.Second

// pathKeepalive is the keepalive a host that finds itself behind NAT
// (discovery) sends each peer when the config sets none: its paths stay
// open, and one that stops answering is known dead (liveWindow) in time
// to move a pair to another relay within seconds.
const pathKeepalive = 2 * time.Second

// liveWindow is how recently a peer must have sent something for its
// direct path to count as live (WeftReach): a few keepalives.
const liveWindow = 5 * time.Second

// MTU is the containers' MTU on this backend (what FLANNEL_MTU says).
func (b *Backend) MTU() int { return b.mtu }

// CarryMTU lets the device take whole the packets of containers started
// under a backend with a larger MTU (vxlan's 1450, host-gw's 1500, before a
// live switch to wireguard): the device's MTU becomes mtu when that is
// larger than its own, so such a packet, even with DF set, is not refused
// with "fragmentation needed". An encrypted packet that then exceeds the
// underlay's MTU leaves as IP fragments (see bindWrapper.Send), which
// costs a second packet only for sizes above this backend's own MTU:
// containers started after the switch take MTU(), and TCP is clamped to it
// (the firewall's MSS rule). It is called before Setup.
func (b *Backend) CarryMTU(mtu int) { b.carriedMTU = mtu }

// Observation is what a host publishes of what its device sees.
type Observation struct {
	// Seen are the peers seen at another endpoint than their leases name
	// (WeftSeen).
	Seen []lease.Sighting
	// Reach are, on a host behind NAT, the peers with a live direct path
	// (WeftReach): a handshake within RejectAfter and a packet received
	// within liveWindow.
	Reach []string
	// BehindNAT says this host is behind NAT: what it reaches changes
	// within seconds and is worth publishing as often.
	BehindNAT bool
}

// Observe reads the device and says what this host sees
// (backends.EndpointObserver).
func (b *Backend) Observe() (Observation, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.control == nil {
		return Observation{}, errors.New("not set up")
	}
	dev, err := b.control.Device(b.name)
	if err != nil {
		return Observation{}, err
	}
	now := time.Now()
	obs := Observation{Seen: sightings(peerStates(dev.Peers), b.want, now), BehindNAT: b.opts.discovered.self.IsValid()}
	rx := make(map[keys.Key]activity, len(dev.Peers))
	for _, p := range dev.Peers {
		k := keys.Key(p.PublicKey)
		a, ok := b.rx[k]
		if !ok {
			a = activity{rx: p.ReceiveBytes} // a baseline: not live until it moves
		} else if a.rx != p.ReceiveBytes {
			a = activity{rx: p.ReceiveBytes, since: now}
		}
		rx[k] = a
		holders := b.holders[k]
		if obs.BehindNAT && len(holders) == 1 && !a.since.IsZero() && now.Sub(a.since) < liveWindow &&
			!p.LastHandshakeTime.IsZero() && now.Sub(p.LastHandshakeTime) < RejectAfter && !strings.HasPrefix(holders[0], "peers/") {
			obs.Reach = append(obs.Reach, holders[0])
		}
	}
	b.rx = rx
	slices.Sort(obs.Reach)
	if len(obs.Reach) > lease.MaxSightings {
		obs.Reach = obs.Reach[:lease.MaxSightings]
	}
	return obs, nil
}

// Relays are the peers this host reaches through a relay, by lease key,
// with the relay's lease key.
func (b *Backend) Relays() map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.opts.discovered.relays)
}

// noteDiscovery takes up what the hosts' sightings say, and says once
// when this host turns out to be behind NAT (its peers see it elsewhere
// than its lease names: it then keeps every peer's path open with
// keepalives, as with -behind-nat) or no longer is.
func (b *Backend) noteDiscovery(found discovery, self lease.Lease) {
	if found.self != b.opts.discovered.self {
		if found.self.IsValid() {
			b.log.Info("this host is behind NAT: its peers see it at another endpoint than its lease names; keeping its paths open with keepalives",
				"seen_at", found.self, "lease_public_ip", self.Attrs.PublicIP)
		} else {
			b.log.Info("this host's peers see it where its lease says (no NAT seen)")
		}
	}
	b.opts.discovered = found
}

// CarriedMTU is the device's MTU when it carries a larger one than MTU(),
// else 0 (backends.MTUCarrier).
func (b *Backend) CarriedMTU() int {
	if b.carriedMTU > b.mtu {
		return b.carriedMTU
	}
	return 0
}

// deviceMTU is the device's MTU: the backend's, or a larger carried one.
func (b *Backend) deviceMTU() deviceMTU {
	return deviceMTU{device: max(b.mtu, b.carriedMTU), underlay: b.ext.MTU}
}

// BackendData is what this host's lease publishes: its public key and port.
func (b *Backend) BackendData() json.RawMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return encodeBackendData(b.key.Public(), b.opts.ListenPort, b.opts.BehindNAT)
}

// Control is what weft needs of wgctrl: read a device, configure it, and
// let go of the client. *wgctrl.Client is one (kernel devices through
// netlink, wireguard-go's through its UAPI socket); wireguardtest.Control
// is a fake that prints what `wg show` would, for the pure tier.
type Control interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

var _ Control = (*wgctrl.Client)(nil)

// SetControl makes the backend control its device through c instead of a
// wgctrl client of its own; it is called before Setup, and Close closes c.
func (b *Backend) SetControl(c Control) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.control = c
}

// Setup creates or adopts the device and opens the wgctrl client.
func (b *Backend) Setup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	dev, err := b.open()
	if err != nil {
		return err
	}
	b.dev = dev
	if b.control == nil {
		client, err := wgctrl.New()
		if err != nil {
			return fmt.Errorf("wgctrl: %w", err)
		}
		b.control = client
	}
	if b.stopSweep == nil && b.opts.OnDemandPeers != OnDemandOff {
		b.stopSweep = make(chan struct{})
		go b.sweepIdle(b.stopSweep)
	}
	return nil
}

// ReloadKey adopts a key written to the key file by `weftctl keys rotate`,
// or makes and stores a new one when rotate is set (SIGHUP). It reports
// whether the key changed; the caller then republishes BackendData.
func (b *Backend) ReloadKey(rotate bool) (bool, error) {
	var key keys.Key
	var err error
	if rotate {
		key, err = keys.Rotate(b.keyFile)
	} else {
		key, err = keys.Load(b.keyFile)
	}
	if err != nil {
		return false, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if key == b.key {
		return false, nil
	}
	b.key = key
	b.applied = false
	b.log.Info("WireGuard key rotated", "public_key", key.Public())
	return true, nil
}

// Apply brings the device to the desired state: key, port, one peer per
// valid lease (per-peer deltas only), address, MTU, and the Network route.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dev == nil {
		return errors.New("wireguard backend used before Setup")
	}
	b.applied = false
	b.noteDiscovery(discover(d), d.Self)
	want, errs, holders := plan(d, b.key.Public(), b.opts)
	current, err := b.readOrRecreate()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	b.want = want
	onDemand := b.onDemandWanted(len(want))
	b.peers.setWanted(want)
	p := planDevice(current, b.key, b.opts.ListenPort, want, onDemand, b.leaseEndpoints, time.Now())
	b.warnMixedFamilies(p.configured)
	if p.config.PrivateKey != nil || p.config.ListenPort != nil || len(p.config.Peers) > 0 {
		if err := b.configure(p.config); err != nil {
			return errors.Join(append(errs, fmt.Errorf("configuring %s: %w", b.name, err))...)
		}
		b.logChanges(p.changes)
	}
	b.holders = holders
	b.leaseEndpoints = p.leaseEndpoints
	b.peers.setConfigured(specKeys(p.configured))
	// Only now, with the port set: a port change waits for the receive
	// goroutines, which must not be activating peers meanwhile.
	b.setOnDemand(onDemand, len(d.Peers))
	if err := b.kick(p.kick); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, netkernel.EnsureTunnelLinkFor(b.kernel, b.name, b.deviceMTU().device, tunnelHalves(d, b.opts))...)
	errs = append(errs, b.syncDirect(nil, DirectRoutes(d, b.opts), d.Network.Addr().Is6(), true)...)
	b.applied = len(errs) == 0
	return errors.Join(errs...)
}

// readOrRecreate reads the device; one that went away (deleted by hand)
// is made again first.
func (b *Backend) readOrRecreate() (*wgtypes.Device, error) {
	current, err := b.read()
	if err == nil {
		return current, nil
	}
	b.log.Warn("WireGuard device missing; recreating it", "err", err)
	b.dev.close()
	if b.dev, err = b.open(); err != nil {
		return nil, err
	}
	if current, err = b.read(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", b.name, err)
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
	if !b.applied || changesSightings(d) || len(b.opts.discovered.relays) > 0 {
		return mesh.ErrWholeApply
	}
	self := b.key.Public()
	before, _ := candidates(d.Before(), self, b.opts)
	after, errs := candidates(d.After(), self, b.opts)
	if !deltaStandsAlone(before, after, b.holders) {
		return mesh.ErrWholeApply
	}
	b.peers.update(before, after)
	held, heldAfter := before, after
	if b.peers.enabled.Load() {
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
		if err := b.configure(cfg); err != nil {
			// The device may be gone (deleted by hand): a whole apply
			// recreates it and refills every peer.
			b.applied = false
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
	if b.leaseEndpoints == nil {
		b.leaseEndpoints = map[keys.Key]netip.AddrPort{}
	}
	for _, c := range before {
		delete(b.holders, c.PublicKey)
		delete(b.leaseEndpoints, c.PublicKey)
	}
	for _, c := range after {
		b.holders[c.PublicKey] = []string{c.Lease}
		b.leaseEndpoints[c.PublicKey] = c.leaseEndpoint()
	}
	if err := b.kick(peersToKick(have, heldAfter, changes, false)); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, b.syncDirect(DirectRoutes(d.Before(), b.opts), DirectRoutes(d.After(), b.opts), d.Network.Addr().Is6(), false)...)
	return errors.Join(errs...)
}

// syncDirect makes DirectRouting's plain routes via the external interface
// want: compared with the kernel's of the desired state's family (ipv6;
// the other family's belong to the other device of a dual-stack network)
// on a whole apply (dump), or with before, what the last apply put there
// (a delta).
func (b *Backend) syncDirect(before, want []underlay.Route, ipv6, dump bool) []error {
	if !b.opts.DirectRouting {
		return nil
	}
	var current map[netip.Prefix]netkernel.Hop
	if dump {
		var err error
		if current, err = netkernel.PeerRoutes(b.kernel, ipv6, -1, b.ext.Index); err != nil {
			return []error{err}
		}
	} else {
		current = netkernel.PlannedRoutes(-1, b.ext.Index, before)
	}
	return netkernel.SyncPeerRoutes(b.kernel, -1, b.ext.Index, current, want, b.log.With("dev", b.ext.Name))
}

// open creates or adopts the device; the on-demand table configures its
// peers in process when it is wireguard-go.
func (b *Backend) open() (*wgDevice, error) {
	dev, err := openDevice(b.kernel, b.name, b.opts, b.deviceMTU(), b.peers, b.log)
	if err != nil {
		return nil, err
	}
	b.peers.setConfigure(dev.addPeer)
	return dev, nil
}

// onDemandWanted decides, for a desired set of n peers, whether the device
// holds only the peers in use: a userspace device, and mode on, or auto
// above OnDemandThreshold.
func (b *Backend) onDemandWanted(n int) bool {
	return b.dev.kind == ImplUserspace &&
		(b.opts.OnDemandPeers == OnDemandOn || b.opts.OnDemandPeers == OnDemandAuto && n > OnDemandThreshold)
}

// setOnDemand turns the on-demand mode on or off, and says so when that
// changes.
func (b *Backend) setOnDemand(on bool, peers int) {
	if b.peers.enabled.Swap(on) != on {
		b.log.Info("on-demand peers", "on", on, "peers", peers, "mode", b.opts.OnDemandPeers, "idle_after", b.opts.OnDemandIdleAfter)
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
		if err := b.configure(cfg); err != nil {
			return fmt.Errorf("starting handshakes on %s: %w", b.name, err)
		}
	}
	return nil
}

// warnMixedFamilies warns, once each time it begins, that a userspace
// device reaches peers at endpoints of both families (see MixedFamilies).
func (b *Backend) warnMixedFamilies(want []PeerSpec) {
	v6 := MixedFamilies(want)
	if b.dev.kind != ImplUserspace || len(v6) == 0 {
		b.mixedWarned = false
		return
	}
	if !b.mixedWarned {
		b.log.Warn("wireguard-go loses packets to IPv6 endpoints on a device that also sends to IPv4 ones (a bug of its UDP bind); "+
			`use kernel WireGuard ("Implementation":"kernel"), or give these peers IPv4 endpoints ("Mode":"ipv4" or "separate")`,
			"device", b.name, "ipv6_endpoints", strings.Join(v6, ","))
		b.mixedWarned = true
	}
}

func (b *Backend) logChanges(changes []Change) {
	for _, c := range changes {
		if c.Remove {
			b.log.Info("peer removed", "public_key", keys.Key(c.PublicKey), "lease", strings.Join(b.holders[c.PublicKey], ","))
			continue
		}
		b.log.Info("peer set", "lease", c.Spec.Lease, "public_key", c.PublicKey, "endpoint", c.Spec.Endpoint)
	}
}

// Cleanup removes the device (its peers, address and route go with it).
func (b *Backend) Cleanup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dev == nil {
		b.dev = &wgDevice{name: b.name, kind: ImplKernel}
	}
	err := b.dev.remove(b.kernel)
	b.dev = nil
	return err
}

// Close stops wireguard-go but leaves the device, peers and routes: a
// persistent TUN (userspace) or the kernel link keeps them for the next run.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopSweep != nil {
		close(b.stopSweep)
		b.stopSweep = nil
	}
	if b.dev != nil {
		b.dev.close()
	}
	if b.control != nil {
		b.control.Close()
	}
	return nil
}

// maxKick bounds the peers kicked at once (see kick): 256 × 64 KiB.
const maxKick = 256

// read is one counted read of the whole device.
func (b *Backend) read() (*wgtypes.Device, error) {
	b.calls.Count(netkernel.CallWGRead)
	return b.control.Device(b.name)
}

// configure is one counted ConfigureDevice call.
func (b *Backend) configure(cfg wgtypes.Config) error {
	b.calls.Count(netkernel.CallWGWrite)
	return b.control.ConfigureDevice(b.name, cfg)
}

// Status is what `weftctl status` and metrics show of the device.
func (b *Backend) Status() (*wgtypes.Device, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.control == nil {
		return nil, errors.New("not set up")
	}
	return b.control.Device(b.name)
}
