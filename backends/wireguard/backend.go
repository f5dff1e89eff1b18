package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/keys"
)

// Backend is the wireguard backend: one WireGuard device and its peers.
// It is a few owners, each with its own methods: what it was configured
// with (settings), this host's key (identity), the device (deviceLink),
// what the last apply left on it (lastApply), what the hosts' sightings
// say (discoveryState, discoverystate.go) and the on-demand table
// (onDemand, ondemand.go). A whole apply plans everything first
// (planWhole, wholeplan.go), then writes. The zero value is not usable;
// use New.
type Backend struct {
	// cfg is set by New and, before Setup, by CarryMTU, SetBehindNAT and
	// OverrideImplementation; read-only afterwards.
	cfg    settings
	kernel netkernel.Kernel
	log    *slog.Logger

	// mu guards everything below; the on-demand table has locks of its
	// own, since wireguard-go's packet path reads it.
	mu    sync.Mutex
	id    identity
	link  deviceLink
	last  lastApply
	found discoveryState
	// relaying is this host's forwarder for pairs behind NAT that chose
	// it as their relay.
	relaying relayingState
	peers    *onDemand
	// sweep ends the idle sweep; nil when none runs.
	sweep chan struct{}
}

// settings are what the backend was configured with.
type settings struct {
	opts Options
	ext  underlay.ExternalInterface
	// mtu is the containers' MTU on this backend (FLANNEL_MTU); the
	// device's is deviceMTU.
	mtu int
	// carriedMTU, when larger than mtu, is the MTU containers started
	// under a previous backend may still send with (CarryMTU).
	carriedMTU int
}

// deviceMTU is the device's MTU: the backend's, or a larger carried one.
func (s settings) deviceMTU() deviceMTU {
	return deviceMTU{device: max(s.mtu, s.carriedMTU), underlay: s.ext.MTU}
}

// identity is this host's WireGuard key and the file it lives in.
type identity struct {
	file string
	key  keys.Key
}

// reload reads the key file again, or makes and stores a new key when
// rotate is set; changed says whether the key is another than before.
func (id *identity) reload(rotate bool) (changed bool, err error) {
	var key keys.Key
	if rotate {
		key, err = keys.Rotate(id.file)
	} else {
		key, err = keys.Load(id.file)
	}
	if err != nil || key == id.key {
		return false, err
	}
	id.key = key
	return true, nil
}

// deviceLink is the device and the control it is read and configured
// through (wgctrl, or a fake): every read and write goes through read and
// configure, each counted.
type deviceLink struct {
	// name is the device's: DeviceName, or a run-unique one in tests.
	name    string
	dev     *wgDevice
	control Control
	calls   *netkernel.Calls
}

// read is one counted read of the whole device.
func (l *deviceLink) read() (*wgtypes.Device, error) {
	l.calls.Count(netkernel.CallWGRead)
	return l.control.Device(l.name)
}

// configure is one counted ConfigureDevice call.
func (l *deviceLink) configure(cfg wgtypes.Config) error {
	l.calls.Count(netkernel.CallWGWrite)
	return l.control.ConfigureDevice(l.name, cfg)
}

// lastApply is what the last apply left on the device, which the next
// one (a delta above all) builds on.
type lastApply struct {
	// ok is false until a whole apply succeeded with the current key:
	// until then a delta cannot trust the device.
	ok bool
	// holders are the leases publishing each key in the state last
	// applied: a delta touching a key held twice needs a whole apply, and
	// log lines name the lease of a peer removed.
	holders map[keys.Key][]string
	// leaseEndpoints are the endpoints the leases named at the last whole
	// apply: an endpoint on the device that differs from an unchanged
	// lease's was roamed to by WireGuard (KeepRoamed).
	leaseEndpoints map[keys.Key]netip.AddrPort
	// want are the peers the last whole apply planned (what Observe
	// compares the device with).
	want []PeerSpec
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
	return &Backend{cfg: settings{opts: opts, ext: ext, mtu: mtu}, kernel: kernel, log: log, id: identity{file: keyFile, key: key},
		link: deviceLink{name: DeviceName, calls: calls}, peers: newOnDemand(), found: newDiscoveryState()}, nil
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
	b.link.name, b.cfg.opts.ListenPort = DeviceNameIPv6, b.cfg.opts.ListenPortV6
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
	b.cfg.opts.Implementation, b.cfg.opts.ImplementationFrom = impl, from
	return nil
}

// SetBehindNAT marks this host as behind NAT (weftd's -behind-nat): its
// lease says so, and its peers get a keepalive every 25 s when the config
// sets none, which keeps the NAT's mapping open and lets peers find it.
// It is called before Setup.
func (b *Backend) SetBehindNAT() {
	b.cfg.opts.BehindNAT = true
	if b.cfg.opts.PersistentKeepalive == 0 {
		b.cfg.opts.PersistentKeepalive = natKeepalive
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

// leadKeepalive is the keepalive a public host sends a peer behind NAT:
// shorter than pathKeepalive, so the public host is the end that sends.
const leadKeepalive = time.Second

// liveWindow is how recently a peer must have sent something for its
// direct path to count as live (WeftReach): a few keepalives.
const liveWindow = 5 * time.Second

// MTU is the containers' MTU on this backend (what FLANNEL_MTU says).
func (b *Backend) MTU() int { return b.cfg.mtu }

// CarryMTU lets the device take whole the packets of containers started
// under a backend with a larger MTU (vxlan's 1450, host-gw's 1500, before a
// live switch to wireguard): the device's MTU becomes mtu when that is
// larger than its own, so such a packet, even with DF set, is not refused
// with "fragmentation needed". An encrypted packet that then exceeds the
// underlay's MTU leaves as IP fragments (see bindWrapper.Send), which
// costs a second packet only for sizes above this backend's own MTU:
// containers started after the switch take MTU(), and TCP is clamped to it
// (the firewall's MSS rule). It is called before Setup.
func (b *Backend) CarryMTU(mtu int) { b.cfg.carriedMTU = mtu }

// CarriedMTU is the device's MTU when it carries a larger one than MTU(),
// else 0 (backends.MTUCarrier).
func (b *Backend) CarriedMTU() int {
	if b.cfg.carriedMTU > b.cfg.mtu {
		return b.cfg.carriedMTU
	}
	return 0
}

// BackendData is what this host's lease publishes: its public key and port.
func (b *Backend) BackendData() json.RawMessage {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.backendDataLocked()
}

// backendDataLocked is BackendData (b.mu held). The lease says the host
// is behind NAT when told so (-behind-nat) or when the other hosts see it
// elsewhere than its lease names (discovery): the others take it from
// here, never from their own or anyone else's sightings of it.
func (b *Backend) backendDataLocked() json.RawMessage {
	return encodeBackendData(b.id.key.Public(), b.cfg.opts.ListenPort, b.cfg.opts.BehindNAT || b.found.now.self.IsValid(), b.relaying.ports)
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
	b.link.control = c
}

// Setup creates or adopts the device and opens the wgctrl client.
func (b *Backend) Setup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	dev, err := b.open()
	if err != nil {
		return err
	}
	b.link.dev = dev
	if b.link.control == nil {
		client, err := wgctrl.New()
		if err != nil {
			return fmt.Errorf("wgctrl: %w", err)
		}
		b.link.control = client
	}
	if b.sweep == nil && b.cfg.opts.OnDemandPeers != OnDemandOff {
		b.sweep = make(chan struct{})
		go b.sweepIdle(b.sweep)
	}
	return nil
}

// ReloadKey adopts a key written to the key file by `weftctl keys rotate`,
// or makes and stores a new one when rotate is set (SIGHUP). It reports
// whether the key changed; the caller then republishes BackendData.
func (b *Backend) ReloadKey(rotate bool) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	changed, err := b.id.reload(rotate)
	if changed {
		b.last.ok = false
		b.log.Info("WireGuard key rotated", "public_key", b.id.key.Public())
	}
	return changed, err
}

// Cleanup removes the device (its peers, address and route go with it).
func (b *Backend) Cleanup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.link.dev == nil {
		b.link.dev = &wgDevice{name: b.link.name, kind: ImplKernel}
	}
	err := b.link.dev.remove(b.kernel)
	b.link.dev = nil
	return err
}

// Close stops wireguard-go but leaves the device, peers and routes: a
// persistent TUN (userspace) or the kernel link keeps them for the next run.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sweep != nil {
		close(b.sweep)
		b.sweep = nil
	}
	if b.link.dev != nil {
		b.link.dev.close()
	}
	if b.link.control != nil {
		b.link.control.Close()
	}
	if b.relaying.fwd != nil {
		b.relaying.fwd.Close()
	}
	return nil
}

// maxKick bounds the peers kicked at once (see kick): 256 × 64 KiB.
const maxKick = 256

// Status is what `weftctl status` and metrics show of the device.
func (b *Backend) Status() (*wgtypes.Device, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.link.control == nil {
		return nil, errors.New("not set up")
	}
	return b.link.control.Device(b.link.name)
}
