package backends

import (
	"strings"

	"github.com/weftnet/weft/lease"
)

// The built-in backends' Backend.Type names, as flannel spells them.
const (
	// UDP is flannel's default, lease.DefaultBackend.
	UDP       = lease.DefaultBackend
	VXLAN     = "vxlan"
	HostGW    = "host-gw"
	WireGuard = "wireguard"
	// Alloc leases subnets and writes the subnet file only.
	Alloc = "alloc"
	// Extension runs the operator's commands as the data path.
	Extension = "extension"
	// IPIP wraps IPv4 in IPv4 (a kernel ipip device).
	IPIP = "ipip"
)

// Kind is what weft knows of one backend before building it: the facts the
// config's validation, weftd's wiring and `weftctl cleanup` need. Adding a
// backend means a Kind here and its constructor (Constructors); nothing in
// lease changes.
type Kind struct {
	Name string
	// IPv6 is set when a dual-stack or IPv6-only network may use it.
	IPv6 bool
	// CarriesIPv6 is set when its own data path carries IPv6 (alloc and
	// extension take IPv6 but leave the routing to someone else); config
	// errors suggest these.
	CarriesIPv6 bool
	// Untyped is set when its hosts write no BackendType in their leases,
	// as flannel's do (lease.BackendConfig.Untyped).
	Untyped bool
	// Tunnel is set when it accepts encapsulated packets from the underlay
	// (the tunnel source filter guards it).
	Tunnel bool
	// RoutesDirect is set when it routes peers' subnets via the external
	// interface itself (host-gw's routes, vxlan's and ipip's DirectRouting),
	// so a switch to another keeps such routes only through it.
	RoutesDirect bool
	// OnUnderlay is set when container traffic crosses the external
	// interface unencapsulated (host-gw's routes, alloc's and the
	// extension's: whatever routing the operator set up).
	OnUnderlay bool
	// Encrypted is set when its data path encrypts every packet.
	Encrypted bool
	// Coexists is set when it can run beside other backends during a
	// live switch: its routes are per peer (host-gw, vxlan), or it routes
	// the Network through its own device (wireguard), or it can route its
	// peers one by one beside one that does (udp). ipip shares the tunnel
	// filter's table with vxlan, and alloc and extension route nothing of
	// their own: switching to or from them takes the old data path down
	// at once, as a restart does.
	Coexists bool
	// GapOptions are its Backend options (lower case, as encoding/json
	// matches keys) that both ends of a pair must agree on, with what a
	// live change of one costs: from the moment one host takes the change
	// until the other has, that pair cannot talk. Other options (an MTU, a
	// keepalive, the on-demand settings) change without a gap.
	GapOptions map[string]string
}

// Gaps the options of GapOptions cost, shared by the kinds that have them.
const (
	gapPort     = "a pair is cut until both hosts have the new port"
	gapPeerPort = "peers send to the old port until they read this host's lease again"
)

// Kinds lists every Backend.Type weft accepts, in the order error messages
// show them.
var Kinds = []Kind{
	{Name: Alloc, IPv6: true, Untyped: true, OnUnderlay: true},
	{Name: Extension, IPv6: true, OnUnderlay: true},
	{Name: HostGW, IPv6: true, CarriesIPv6: true, RoutesDirect: true, OnUnderlay: true, Coexists: true},
	{Name: IPIP, Tunnel: true, RoutesDirect: true},
	{Name: UDP, Untyped: true, Coexists: true, GapOptions: map[string]string{"port": gapPort}},
	{Name: VXLAN, IPv6: true, CarriesIPv6: true, Tunnel: true, RoutesDirect: true, Coexists: true,
		GapOptions: map[string]string{"vni": "a pair is cut until both hosts have the new VNI", "port": gapPort}},
	{Name: WireGuard, IPv6: true, CarriesIPv6: true, Encrypted: true, Coexists: true, GapOptions: map[string]string{
		"psk":          "a pair drops its packets until both hosts have the new PSK (each host takes it as the config changes); change it in a quiet moment",
		"listenport":   gapPeerPort,
		"listenportv6": gapPeerPort,
		"mode":         "the WireGuard devices are rebuilt: pairs are cut until both hosts have the new Mode",
	}},
}

// Lookup returns the Kind named name.
func Lookup(name string) (Kind, bool) {
	for _, k := range Kinds {
		if k.Name == name {
			return k, true
		}
	}
	return Kind{}, false
}

// KindOf is the Kind of the config's backend (a config that passed
// CheckConfig always has one; the zero Kind otherwise).
func KindOf(cfg *lease.Config) Kind {
	k, _ := Lookup(cfg.Backend.Type)
	return k
}

// names lists the Kinds' names for which keep holds.
func names(keep func(Kind) bool) []string {
	var out []string
	for _, k := range Kinds {
		if keep(k) {
			out = append(out, k.Name)
		}
	}
	return out
}

// encryptedHint starts the note a config without a Backend.Type gets.
const encryptedHint = "for an encrypted mesh"

// CheckConfig checks what a parsed config asks of its backend (that the
// backend exists, carries the families the config enables, and supports
// the keys it sets) and sets what the backend implies
// (BackendConfig.Untyped). Every error wraps lease.ErrInvalidConfig and
// names the key.
func CheckConfig(cfg *lease.Config) error {
	kind, ok := Lookup(cfg.Backend.Type)
	if !ok {
		return lease.ConfigError(`key "Backend.Type": unknown backend %q; valid types are %s`,
			cfg.Backend.Type, strings.Join(names(func(Kind) bool { return true }), ", "))
	}
	if cfg.EnableIPv6 && !kind.IPv6 {
		// flannel's udp and ipip backends are IPv4 only too; leasing IPv6
		// subnets no data path carries would hand containers dead addresses.
		return lease.ConfigError(`key "EnableIPv6": the %s backend carries IPv4 only (as flannel's does); use %s for IPv6`,
			cfg.Backend.Type, strings.Join(names(func(k Kind) bool { return k.CarriesIPv6 }), ", "))
	}
	if cfg.StrictEncryption && !kind.Encrypted {
		return lease.ConfigError(`key "StrictEncryption": the %s backend does not encrypt; strict encryption needs "Backend": {"Type": "%s"}`, cfg.Backend.Type, WireGuard)
	}
	if cfg.PeersNetwork.IsValid() && kind.Name != WireGuard {
		return lease.ConfigError(`key "PeersNetwork": outside peers join through WireGuard; this network's backend is %q`, cfg.Backend.Type)
	}
	cfg.Backend.Untyped = kind.Untyped
	if cfg.BackendDefaulted {
		cfg.Notes = append(cfg.Notes, encryptedHint+`: set "Backend": {"Type": "`+WireGuard+`"}`)
	}
	return nil
}

// ParseConfig parses a network config (lease.ParseConfig) and checks it
// against the backends (CheckConfig): what weftd, weftctl and the lab read
// a config with.
func ParseConfig(data []byte) (*lease.Config, error) {
	cfg, err := lease.ParseConfig(data)
	if err != nil {
		return nil, err
	}
	if err := CheckConfig(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}
