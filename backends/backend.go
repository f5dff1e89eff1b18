// Package backends defines what a data path backend is and maps each
// Backend.Type to its constructor. The backends themselves live in the
// subpackages (hostgw, ...); cmd/weftd picks one through New.
package backends

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/alloc"
	"github.com/weftnet/weft/backends/extension"
	"github.com/weftnet/weft/backends/hostgw"
	"github.com/weftnet/weft/backends/ipip"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/backends/udp"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/backends/vxlan"
	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Backend is one data path. Its lifecycle: New, Setup (devices; what to
// publish), then Apply for every desired state, then Close (leave the data
// path in place) or Cleanup (remove all of it).
type Backend interface {
	mesh.Applier
	// Setup creates or adopts the backend's devices.
	Setup(ctx context.Context) error
	// BackendData is what the lease publishes (nil for none); it may
	// change when the backend's identity does (a rotated key).
	BackendData() json.RawMessage
	// MTU is the MTU for the subnet file and containers.
	MTU() int
	// Cleanup removes every device, route and entry the backend made.
	Cleanup(ctx context.Context) error
	// Close stops the backend's goroutines but leaves the data path, so
	// traffic flows while weftd restarts.
	Close() error
}

// Env is everything a backend constructor may use.
type Env struct {
	Config   *lease.Config
	External underlay.ExternalInterface
	Log      *slog.Logger
	// PublicIP is what this host's lease publishes.
	PublicIP netip.Addr
	// PublicIPv6 is the lease's PublicIPv6 on a dual-stack network, else
	// invalid.
	PublicIPv6 netip.Addr
	// KeyFile is where the WireGuard private key lives.
	KeyFile string
	// Kernel is the network stack the backend programs.
	Kernel netkernel.Kernel
	// Calls counts the backend's kernel calls not made through Kernel
	// (WireGuard device reads and writes); nil counts nothing.
	Calls *netkernel.Calls
	// WireGuardImplementation, when set, overrides the config's
	// Backend.Implementation on this host (weftd's -wireguard-implementation).
	WireGuardImplementation string
	// BehindNAT marks this host's wireguard lease as behind NAT (weftd's
	// -behind-nat).
	BehindNAT bool
	// Previous is this host's lease before this run (nil: none): vxlan
	// keeps the VTEP MAC it published there, so an address change (which
	// StableMAC would follow) does not change it.
	Previous *lease.Attrs
	// CarriedMTU is the MTU of containers started under a previous
	// backend (a live switch); a wireguard device whose own MTU is smaller
	// takes their packets whole (wireguard.Backend.CarryMTU). 0: none.
	CarriedMTU int
	// SourceFilter, when set, makes the filter that lets a tunnel backend
	// (vxlan, ipip) accept tunnel packets only from its peers (weftd's
	// -tunnel-source-filter, on by default); nil accepts them from anyone.
	SourceFilter func(tunnelfilter.Tunnel) (SourceFilter, error)
}

// filtered wraps a tunnel backend in its source filter when env asks for
// one (FilterSources).
func filtered(env Env, b Backend, tunnel tunnelfilter.Tunnel) (Backend, error) {
	if env.SourceFilter == nil {
		return b, nil
	}
	f, err := env.SourceFilter(tunnel)
	if err != nil {
		return nil, fmt.Errorf("filtering tunnel packets by source: %w; turn it off with -tunnel-source-filter=false", err)
	}
	return FilterSources(b, f), nil
}

// DualStack is a backend that publishes data of its own for its IPv6 half
// (flannel's BackendV6Data: the wireguard backend's IPv6 port).
type DualStack interface {
	Backend
	BackendV6Data() json.RawMessage
}

// KeyReloader is a backend whose identity key can change at run time.
type KeyReloader interface {
	Backend
	// ReloadKey adopts a key changed on disk, or makes a new one when rotate
	// is set; changed says whether BackendData must be republished.
	ReloadKey(rotate bool) (changed bool, err error)
}

// DeviceStatus is a backend that can show its WireGuard device (peers,
// handshakes, byte counts) for /status and /metrics.
type DeviceStatus interface {
	Status() (*wgtypes.Device, error)
}

// OnDemandReporter is a backend whose WireGuard device may hold only the
// peers in use (wireguard-go's on-demand mode).
type OnDemandReporter interface {
	OnDemand() wireguard.OnDemandStats
}

// Leaver is a backend with work to undo when the host moves to another
// Backend.Type: the extension backend's commands made routes weft does not
// know, which would keep carrying traffic their way (in clear, after a
// switch to wireguard).
type Leaver interface {
	// Leave undoes what the backend made for its peers; the backend is
	// closed afterwards.
	Leave(ctx context.Context) error
}

// DropCounter is a backend that refuses datagrams and counts them by
// reason, for /status and /metrics.
type DropCounter interface {
	Drops() map[string]uint64
}

// Footprints lists what every built-in backend leaves on a host, by
// Backend.Type, for `weftctl cleanup`.
func Footprints() map[string]netkernel.Footprint {
	return map[string]netkernel.Footprint{
		Alloc:     alloc.Footprint(),
		Extension: extension.Footprint(),
		IPIP:      ipip.Footprint(),
		HostGW:    hostgw.Footprint(),
		UDP:       udp.Footprint(),
		VXLAN:     vxlan.Footprint(),
		WireGuard: wireguard.Footprint(),
	}
}

// RemoveOthers removes from this host what the other backends left, so a
// host switched to current (in the config, then weftd restarted) sends no
// packet through a leftover path: their devices (with the routes,
// neighbours and FDB entries on them) and, for the tunnel backends, weft's
// routes via the external interface (host-gw's, vxlan DirectRouting's),
// which being more specific would keep carrying traffic in clear, unless
// keepDirect (wireguard's DirectRouting wants such routes, and its first
// apply prunes the ones no peer wants). It returns what it removed.
//
// keep are the backends that stay: the config's first and, during a live
// switch, the ones still needed by peers that have not switched.
func RemoveOthers(k netkernel.Kernel, keep []string, ext underlay.ExternalInterface, keepDirect bool) ([]string, error) {
	var removed []string
	var errs []error
	links, err := k.LinkList()
	if err != nil {
		return nil, err
	}
	footprints := Footprints()
	kept := func(name string) bool {
		return slices.ContainsFunc(keep, func(b string) bool { return footprints[b].OwnsLink(name) })
	}
	for _, l := range links {
		name := l.Attrs().Name
		if kept(name) {
			continue
		}
		for backend, f := range footprints {
			if slices.Contains(keep, backend) || !f.OwnsLink(name) {
				continue
			}
			if err := k.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("removing %s's device %s: %w", backend, name, err))
			} else {
				removed = append(removed, backend+" device "+name)
			}
			break
		}
	}
	routesDirect := slices.ContainsFunc(keep, func(b string) bool { k, _ := Lookup(b); return k.RoutesDirect })
	if !routesDirect && !(keep[0] == WireGuard && keepDirect) {
		routes, err := netkernel.OwnedRoutes(k)
		if err != nil {
			return removed, errors.Join(append(errs, err)...)
		}
		for _, r := range routes {
			if r.LinkIndex != ext.Index {
				continue
			}
			dst, _ := netkernel.Prefix(r.Dst)
			if err := k.RouteDel(&r); err != nil {
				errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			} else {
				removed = append(removed, fmt.Sprintf("route %s via %s", dst, netkernel.Addr(r.Gw)))
			}
		}
	}
	return removed, errors.Join(errs...)
}

// Constructor builds a backend from its environment.
type Constructor func(Env) (Backend, error)

// Constructors maps each Backend.Type built into weft to its constructor.
func Constructors() map[string]Constructor {
	return map[string]Constructor{
		Alloc: func(env Env) (Backend, error) { return alloc.New(env.External), nil },
		Extension: func(env Env) (Backend, error) {
			return extension.New(env.Config.Backend.Raw, env.External, env.Log)
		},
		HostGW: func(env Env) (Backend, error) {
			b := hostgw.New(env.External, env.Kernel, env.Log)
			if !env.Config.EnableIPv4 {
				return &ipv6Only{v6: b}, nil
			}
			return b, nil
		},
		IPIP: func(env Env) (Backend, error) {
			b, err := ipip.New(env.Config.Backend.Raw, env.External, env.Kernel, env.Log)
			if err != nil {
				return nil, err
			}
			return filtered(env, b, tunnelfilter.Tunnel{IPIP: true})
		},
		UDP: func(env Env) (Backend, error) {
			return udp.New(env.Config, env.External, env.Kernel, env.Log)
		},
		VXLAN: func(env Env) (Backend, error) {
			b, err := newVXLAN(env)
			if err != nil {
				return nil, err
			}
			opts, err := vxlan.ParseOptions(env.Config.Backend.Raw)
			if err != nil {
				return nil, err
			}
			return filtered(env, b, tunnelfilter.Tunnel{VXLANPort: uint16(opts.Port)})
		},
		WireGuard: newWireGuard,
	}
}

// newVXLAN builds the vxlan backend: one device, or on a dual-stack
// network one per family, or the IPv6 one of an IPv6-only network.
func newVXLAN(env Env) (Backend, error) {
	if !env.Config.EnableIPv4 {
		v6, err := vxlan.NewIPv6(env.Config.Backend.Raw, env.External, env.PublicIPv6, env.Kernel, env.Log)
		if err != nil {
			return nil, err
		}
		if env.Previous != nil {
			v6.KeepMAC(env.Previous.BackendV6Data())
		}
		return &ipv6Only{v6: v6}, nil
	}
	v4, err := vxlan.New(env.Config.Backend.Raw, env.External, env.PublicIP, env.Kernel, env.Log)
	if err != nil {
		return nil, err
	}
	if env.Previous != nil {
		v4.KeepMAC(env.Previous.BackendData)
	}
	if !env.Config.EnableIPv6 {
		return v4, nil
	}
	v6, err := vxlan.NewIPv6(env.Config.Backend.Raw, env.External, env.PublicIPv6, env.Kernel, env.Log)
	if err != nil {
		return nil, err
	}
	if env.Previous != nil {
		v6.KeepMAC(env.Previous.BackendV6Data())
	}
	return &dualStack{v4: v4, v6: v6}, nil
}

// newWireGuard builds the wireguard backend: one device, or on a
// dual-stack network in Mode "separate" (flannel's default) a device per
// family (wireguard.Stack), with this host's flags: its implementation
// and whether it is behind NAT.
func newWireGuard(env Env) (Backend, error) {
	s, err := wireguard.NewStack(env.Config, env.External, env.KeyFile, env.Kernel, env.Calls, env.Log)
	if err != nil {
		return nil, err
	}
	if env.BehindNAT {
		s.SetBehindNAT()
	}
	if env.CarriedMTU > 0 {
		s.CarryMTU(env.CarriedMTU)
	}
	if env.WireGuardImplementation != "" {
		if err := s.OverrideImplementation(env.WireGuardImplementation, "-wireguard-implementation"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// EndpointObserver is a backend whose device sees where its peers'
// packets really come from (wireguard): the peers it sees elsewhere than
// their leases name and, behind NAT, the peers it reaches directly, which
// this host publishes (lease.Sighting); and the peers it reaches through
// a relay.
type EndpointObserver interface {
	Observe() (wireguard.Observation, error)
	Relays() map[string]string
	// Trials are the peers this host tries directly because their relay
	// asked (TryDirect), by lease key, with the relay's lease key.
	Trials() map[string]string
	// DiscoveryChanged is signalled when the host finds out it is behind
	// NAT, or no longer is: worth observing and publishing at once.
	DiscoveryChanged() <-chan struct{}
}

// RelayReporter is a backend that may forward the ciphertext of pairs of
// hosts behind NAT (wireguard's relays), for /status and /metrics.
type RelayReporter interface {
	Relaying() wireguard.Relaying
}

// MTUCarrier is a backend whose device may carry a larger MTU than its
// containers' (Env.CarriedMTU).
type MTUCarrier interface {
	// CarriedMTU is the device's MTU when it is larger than MTU(), else 0.
	CarriedMTU() int
}

// CarriedMTU is the carried MTU of the first backend in b's stack that
// can carry one (As), when it carries one.
func CarriedMTU(b Backend) (int, bool) {
	c, ok := As[MTUCarrier](b)
	if !ok || c.CarriedMTU() == 0 {
		return 0, false
	}
	return c.CarriedMTU(), true
}

// KeepsDirectRoutes reports whether the config's backend routes some peers
// plainly via the external interface (wireguard's DirectRouting).
func KeepsDirectRoutes(cfg *lease.Config) bool {
	if cfg.Backend.Type != WireGuard {
		return false
	}
	o, err := wireguard.ParseOptions(cfg.Backend.Raw)
	return err == nil && o.DirectRouting
}

// ValidateOptions checks the Backend options of cfg without touching the
// host, so a bad option is reported like any other config error (weftd
// waits for a fix; `weftctl config validate` refuses the file).
func ValidateOptions(cfg *lease.Config) error {
	var err error
	switch cfg.Backend.Type {
	case WireGuard:
		var o wireguard.Options
		o, err = wireguard.ParseOptions(cfg.Backend.Raw)
		switch {
		case err != nil:
		case cfg.EnableIPv4 && cfg.EnableIPv6 && o.Mode == wireguard.ModeSeparate && o.ListenPortV6 == o.ListenPort:
			err = fmt.Errorf(`key "Backend.ListenPortV6": %d is ListenPort too; Mode "separate" runs a device per family, each on a port of its own`, o.ListenPort)
		case cfg.StrictEncryption && o.DirectRouting:
			err = errors.New(`key "Backend.DirectRouting": it routes peers on the same network in clear, which "StrictEncryption" forbids; drop one of the two`)
		}
	case VXLAN:
		_, err = vxlan.ParseOptions(cfg.Backend.Raw)
	case UDP:
		_, err = udp.ParseOptions(cfg.Backend.Raw)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", lease.ErrInvalidConfig, err)
	}
	return nil
}

// New builds the backend the config asks for, or says clearly why not.
func New(env Env) (Backend, error) {
	ctors := Constructors()
	ctor, ok := ctors[env.Config.Backend.Type]
	if !ok {
		built := make([]string, 0, len(ctors))
		for name := range ctors {
			built = append(built, name)
		}
		slices.Sort(built)
		return nil, fmt.Errorf("backend %q is not available in this weft build (available: %s); change Backend.Type in the network config",
			env.Config.Backend.Type, strings.Join(built, ", "))
	}
	return ctor(env)
}

// Every backend package satisfies Backend as it is, and the optional
// capabilities weftd finds by type assertion are asserted here, so a
// drifting signature is a build error rather than a silent fallback (a
// backend quietly doing only whole applies).
var (
	_ Backend = (*alloc.Backend)(nil)
	_ Backend = (*hostgw.Backend)(nil)
	_ Backend = (*udp.Backend)(nil)
	_ Backend = (*vxlan.Backend)(nil)
	_ Backend = (*wireguard.Backend)(nil)

	_ mesh.DeltaApplier = (*hostgw.Backend)(nil)
	_ mesh.DeltaApplier = (*vxlan.Backend)(nil)
	_ mesh.DeltaApplier = (*wireguard.Backend)(nil)
	_ mesh.DeltaApplier = (*ipip.Backend)(nil)
	_ Backend           = (*ipip.Backend)(nil)
	_ Backend           = (*extension.Backend)(nil)
	_ KeyReloader       = (*wireguard.Backend)(nil)
	_ DeviceStatus      = (*wireguard.Backend)(nil)
	_ OnDemandReporter  = (*wireguard.Backend)(nil)
	_ Backend           = (*wireguard.Stack)(nil)
	_ mesh.DeltaApplier = (*wireguard.Stack)(nil)
	_ KeyReloader       = (*wireguard.Stack)(nil)
	_ MTUCarrier        = (*wireguard.Stack)(nil)
	_ EndpointObserver  = (*wireguard.Backend)(nil)
	_ MTUCarrier        = (*wireguard.Backend)(nil)
	_ Wrapper           = (*wireguard.Stack)(nil)
	_ DropCounter       = (*udp.Backend)(nil)
	_ Leaver            = (*extension.Backend)(nil)
)
