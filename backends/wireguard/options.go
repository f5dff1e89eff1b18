package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/keys"
)

// DeviceName is the WireGuard interface weft creates.
const DeviceName = "weft-wg"

// DeviceNameIPv6 is the second device of Mode "separate" on a dual-stack
// network, flannel's flannel-wg-v6 renamed.
const DeviceNameIPv6 = "weft-wg-v6"

// Mode values, as flannel spells them: how a dual-stack network's two
// families share WireGuard.
const (
	// ModeSeparate runs one device per family, IPv4 over the IPv4
	// underlay and IPv6 over the IPv6 one (flannel's default).
	ModeSeparate = "separate"
	// ModeAuto runs one device for both families and picks each peer's
	// endpoint family as flannel's selectMode does.
	ModeAuto = "auto"
	// ModeIPv4 and ModeIPv6 run one device for both families, every peer
	// reached at its IPv4 (or IPv6) address.
	ModeIPv4 = "ipv4"
	ModeIPv6 = "ipv6"
)

// Implementation choices for Options.Implementation.
const (
	ImplAuto      = "auto"
	ImplKernel    = "kernel"
	ImplUserspace = "userspace"
)

// Overhead of WireGuard over IPv6 (40 IP + 8 UDP + 32 WireGuard); the MTU
// default subtracts it so the tunnel works on either underlay family.
const Overhead = 80

// Options are the "Backend" keys of a wireguard network config.
type Options struct {
	ListenPort int
	// ListenPortV6 is the port of the IPv6 device in Mode "separate"
	// (flannel's default 51821).
	ListenPortV6 int
	// Mode is how a dual-stack network uses WireGuard (ModeSeparate, ...).
	Mode string
	// PSK is an optional pre-shared key every peer uses.
	PSK *keys.Key
	// PersistentKeepalive is 0 (off) or the interval between keepalives.
	PersistentKeepalive time.Duration
	// MTU is the MTU of the packets on the wire, as in flannel: the device
	// gets MTU − Overhead (0: the external interface's MTU − Overhead).
	MTU            int
	Implementation string
	// OnDemandPeers is auto, on or off: whether a userspace device holds
	// only the peers in use (ondemand.go). OnDemandIdleAfter is how long
	// a peer may be idle before it is removed from the device.
	OnDemandPeers     string
	OnDemandIdleAfter time.Duration
	// ImplementationFrom names where Implementation came from, for log
	// lines and errors: the config key, or weftd's flag overriding it.
	ImplementationFrom string

	// DirectRouting sends traffic to peers this host reaches without a
	// gateway (on the external interface's own networks, as vxlan's
	// DirectRouting decides) by a plain route via their PublicIP, as
	// host-gw does, unencrypted; the others go through WireGuard.
	DirectRouting bool
	// BehindNAT says this host is behind NAT (weftd's -behind-nat): its
	// lease says so, so peers configure it eagerly and keep the endpoint
	// WireGuard finds for it.
	BehindNAT bool

	// localIPv4 and localIPv6 are this host's underlay addresses, for
	// Mode "auto"'s choice of each peer's endpoint family; localPrefixes
	// the external interface's networks, for DirectRouting.
	localIPv4, localIPv6 netip.Addr
	localPrefixes        []netip.Prefix
}

// onLocalNetwork reports whether ip is on one of the external interface's
// networks.
func (o Options) onLocalNetwork(ip netip.Addr) bool {
	for _, p := range o.localPrefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// direct reports whether a peer at ip is reached by a plain route
// (DirectRouting, and ip on one of the external interface's networks).
func (o Options) direct(ip netip.Addr) bool {
	return o.DirectRouting && o.onLocalNetwork(ip)
}

// useIPv6 says whether a peer of a single-device dual-stack network (Mode
// auto, ipv4, ipv6) is reached at its IPv6 address. "auto" decides as
// flannel's selectMode: IPv4 when the peer's IPv4 address is public and
// this host has one, IPv6 when both ends have public IPv6 addresses, else
// IPv4.
func (o Options) useIPv6(peer4, peer6 netip.Addr) bool {
	switch {
	case !peer6.IsValid() || o.Mode == ModeIPv4:
		return false
	case o.Mode == ModeIPv6:
		return true
	case !peer4.IsPrivate() && o.localIPv4.IsValid():
		return false
	}
	return !peer6.IsPrivate() && o.localIPv6.IsValid() && !o.localIPv6.IsPrivate()
}

// ValidImplementation reports whether impl is one of auto, kernel, userspace.
func ValidImplementation(impl string) bool {
	return impl == ImplAuto || impl == ImplKernel || impl == ImplUserspace
}

// ParseOptions reads and checks the Backend object. Every error names the
// option at fault.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var in struct {
		ListenPort                  *int    `json:"ListenPort"`
		ListenPortV6                *int    `json:"ListenPortV6"`
		Mode                        string  `json:"Mode"`
		PSK                         string  `json:"PSK"`
		PersistentKeepaliveInterval float64 `json:"PersistentKeepaliveInterval"`
		MTU                         int     `json:"MTU"`
		Implementation              string  `json:"Implementation"`
		OnDemandPeers               string  `json:"OnDemandPeers"`
		OnDemandIdleAfter           float64 `json:"OnDemandIdleAfter"`
		DirectRouting               bool    `json:"DirectRouting"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return Options{}, fmt.Errorf("wireguard Backend options: %w", err)
		}
	}
	o := Options{MTU: in.MTU, Implementation: in.Implementation, ImplementationFrom: `key "Backend.Implementation"`, DirectRouting: in.DirectRouting}
	var err error
	if o.ListenPort, err = options.Port("ListenPort", in.ListenPort, 51820); err != nil {
		return o, err
	}
	if o.ListenPortV6, err = options.Port("ListenPortV6", in.ListenPortV6, 51821); err != nil {
		return o, err
	}
	switch o.Mode = in.Mode; o.Mode {
	case "":
		o.Mode = ModeSeparate
	case ModeSeparate, ModeAuto, ModeIPv4, ModeIPv6:
	default:
		return o, fmt.Errorf(`key "Backend.Mode": %q is not one of separate, auto, ipv4, ipv6`, in.Mode)
	}
	if in.PSK != "" {
		psk, err := keys.ParseKey(in.PSK)
		if err != nil {
			return o, fmt.Errorf(`key "Backend.PSK": %v; make one with "wg genpsk"`, err)
		}
		o.PSK = &psk
	}
	if in.PersistentKeepaliveInterval < 0 || in.PersistentKeepaliveInterval > 65535 {
		return o, fmt.Errorf(`key "Backend.PersistentKeepaliveInterval": %v is not between 0 and 65535 seconds`, in.PersistentKeepaliveInterval)
	}
	o.PersistentKeepalive = time.Duration(in.PersistentKeepaliveInterval) * time.Second
	if err := options.MTU(o.MTU); err != nil {
		return o, err
	}
	if o.Implementation == "" {
		o.Implementation = ImplAuto
	}
	if !ValidImplementation(o.Implementation) {
		return o, fmt.Errorf(`key "Backend.Implementation": %q is not one of auto, kernel, userspace`, o.Implementation)
	}
	switch o.OnDemandPeers = in.OnDemandPeers; o.OnDemandPeers {
	case "":
		o.OnDemandPeers = OnDemandAuto
	case OnDemandAuto, OnDemandOn, OnDemandOff:
	default:
		return o, fmt.Errorf(`key "Backend.OnDemandPeers": %q is not one of auto, on, off`, in.OnDemandPeers)
	}
	switch idle := in.OnDemandIdleAfter; {
	case idle == 0:
		o.OnDemandIdleAfter = IdleAfter
	case idle < 1 || idle > 86400:
		return o, fmt.Errorf(`key "Backend.OnDemandIdleAfter": %v is not between 1 and 86400 seconds`, idle)
	default:
		o.OnDemandIdleAfter = time.Duration(idle * float64(time.Second))
	}
	return o, nil
}

// BackendData is what a wireguard lease publishes, as flannel does, and
// weft's NAT flag, which flannel ignores (it is left out when false, so a
// lease reads byte for byte as flannel's).
type BackendData struct {
	PublicKey string `json:"PublicKey"`
	Port      int    `json:"Port"`
	// NAT says the host is behind NAT: the PublicIP and Port it publishes
	// may not reach it; WireGuard finds its real address from its
	// handshakes.
	NAT bool `json:"NAT,omitempty"`
	// Relay are, on a public host, the pairs of hosts behind NAT it
	// forwards ciphertext for, each on its own port (relaying.go).
	Relay []RelayPort `json:"Relay,omitempty"`
}

// RelayPort is one pair a relay forwards for and the UDP port, on the
// relay's PublicIP, both ends send the pair's datagrams to.
type RelayPort struct {
	// Pair are the ends' lease keys, in order.
	Pair [2]string `json:"Pair"`
	Port int       `json:"Port"`
	// TryDirect asks the pair to try its direct path for a while: the
	// relay sees each end at its port from the same address and port as
	// at its own WireGuard port, so both ends' NATs keep one mapping per
	// source port and a direct path can open (relaying.go).
	TryDirect bool `json:"TryDirect,omitempty"`
	// At are, with TryDirect, where the relay's own WireGuard device sees
	// each end (Pair's order): where each end tries the other directly.
	At []netip.AddrPort `json:"At,omitempty"`
}

// EncodeBackendData renders the lease's BackendData.
func EncodeBackendData(pub keys.Key, port int) json.RawMessage {
	return encodeBackendData(pub, port, false, nil)
}

func encodeBackendData(pub keys.Key, port int, nat bool, relays []RelayPort) json.RawMessage {
	data, _ := json.Marshal(BackendData{PublicKey: pub.String(), Port: port, NAT: nat, Relay: relays})
	return data
}
