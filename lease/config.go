// Package lease holds weft's view of the cluster: the network config stored
// at <prefix>/config, the subnet leases at <prefix>/subnets/*, their
// encoding (byte-compatible with flannel), subnet allocation, and the
// algorithms that claim, keep and watch leases through a narrow Store
// interface. Only lease/etcdstore talks to etcd.
package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// DefaultBackend is the Backend.Type of a config that names none, as in
// flannel, and of a lease without a BackendType (flannel's udp writes none).
// It is the one backend lease knows by name: which others exist, what they
// carry and what they need is declared in package backends, which checks a
// parsed config (backends.CheckConfig).
const DefaultBackend = "udp"

// ErrInvalidConfig is wrapped by every validation error, so callers can tell
// a bad config (wait for a fix) from a store failure (retry).
var ErrInvalidConfig = errors.New("invalid network config")

// Config is the network config every host reads from <prefix>/config. After
// ParseConfig all defaults are filled in: SubnetLen, SubnetMin and SubnetMax
// are set and Backend.Type is never empty.
type Config struct {
	// Network is the cluster-wide pool every host's subnet comes from.
	Network netip.Prefix
	// SubnetLen is the prefix length of each host's subnet.
	SubnetLen int
	// SubnetMin and SubnetMax bound the network addresses of allocatable subnets.
	SubnetMin, SubnetMax netip.Addr
	// EnableIPv4 is true unless the config says false (flannel's default).
	EnableIPv4 bool
	// EnableIPv6 asks for dual stack: IPv6Network, IPv6SubnetLen,
	// IPv6SubnetMin and IPv6SubnetMax are then set and checked with
	// flannel's rules (config6.go).
	EnableIPv6                   bool
	IPv6Network                  netip.Prefix
	IPv6SubnetLen                int
	IPv6SubnetMin, IPv6SubnetMax netip.Addr
	// Notes say what was read differently from how it was written (a
	// Network with host bits, "VXLAN" for "vxlan"), as flannel reads it;
	// weftd logs them once when it loads the config.
	Notes []string
	// PeersNetwork is where outside peers (machines joined as WireGuard
	// peers, not weft hosts) get their addresses; invalid when unset.
	// weft only: flannel ignores the key.
	PeersNetwork netip.Prefix
	// EnableNFTables keeps the masquerade and forward rules in weft's own
	// nftables tables instead of iptables chains, as flannel's key does.
	EnableNFTables bool
	// StrictEncryption asks that no packet to another host's subnet leave
	// this host except encrypted (weft only: a drop rule for everything
	// else; backends.CheckConfig allows it with an encrypting backend
	// alone).
	StrictEncryption bool
	// Backend selects and configures the data path.
	Backend BackendConfig
	// BackendDefaulted is true when the config had no Backend and weft chose
	// udp as flannel does; weftd says so in its log.
	BackendDefaulted bool
}

// BackendConfig is the "Backend" object: its Type plus the raw options that
// the chosen backend parses itself.
type BackendConfig struct {
	// Type is the lower-cased Backend.Type; ParseConfig does not check that
	// such a backend exists (backends.CheckConfig does).
	Type string
	// Untyped is set for a backend whose hosts write no BackendType in
	// their leases (flannel's udp and alloc), by backends.CheckConfig: on
	// such a network a lease without one is taken as this backend's.
	Untyped bool
	// Raw is the whole Backend object as it appeared in the config.
	Raw json.RawMessage
}

// rawConfig mirrors the JSON so every field's type is checked by the decoder
// and reported by name.
type rawConfig struct {
	Network          *string         `json:"Network"`
	SubnetLen        *int            `json:"SubnetLen"`
	SubnetMin        *string         `json:"SubnetMin"`
	SubnetMax        *string         `json:"SubnetMax"`
	EnableIPv4       *bool           `json:"EnableIPv4"`
	EnableIPv6       bool            `json:"EnableIPv6"`
	IPv6Network      *string         `json:"IPv6Network"`
	IPv6SubnetLen    *int            `json:"IPv6SubnetLen"`
	IPv6SubnetMin    *string         `json:"IPv6SubnetMin"`
	IPv6SubnetMax    *string         `json:"IPv6SubnetMax"`
	PeersNetwork     *string         `json:"PeersNetwork"`
	EnableNFTables   bool            `json:"EnableNFTables"`
	StrictEncryption bool            `json:"StrictEncryption"`
	Backend          json.RawMessage `json:"Backend"`
}

// maxConfigSize bounds what we agree to parse; a real config is a few
// hundred bytes.
const maxConfigSize = 64 << 10

// ParseConfig decodes and validates a flannel-format network config and fills
// in flannel's defaults. Every error wraps ErrInvalidConfig and names the key
// at fault.
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > maxConfigSize {
		return nil, ConfigError("config is %d bytes, more than the %d a network config can be", len(data), maxConfigSize)
	}
	var raw rawConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&raw); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return nil, ConfigError("key %q: expected a %s, got a JSON %s", typeErr.Field, typeErr.Type, typeErr.Value)
		}
		return nil, ConfigError("not valid JSON: %v", err)
	}
	if off := dec.InputOffset(); len(bytes.TrimSpace(data[off:])) > 0 {
		// flannel's json.Unmarshal refuses them too: two writers'
		// configs run together, or a paste gone wrong.
		return nil, ConfigError("bytes after the JSON object, at offset %d (%.20q): the config must be one JSON object; "+
			"rewrite it with `weftctl config set`", off, bytes.TrimSpace(data[off:]))
	}
	if raw.EnableIPv4 != nil && !*raw.EnableIPv4 {
		return parseIPv6Only(raw)
	}
	if raw.Network == nil {
		return nil, ConfigError(`key "Network" is missing; set it to a CIDR such as "10.5.0.0/16"`)
	}
	network, err := netip.ParsePrefix(*raw.Network)
	if err != nil || !network.Addr().Is4() {
		return nil, ConfigError(`key "Network": %q is not an IPv4 CIDR such as "10.5.0.0/16"`, *raw.Network)
	}
	cfg := &Config{Network: network.Masked(), EnableIPv4: true, EnableIPv6: raw.EnableIPv6, EnableNFTables: raw.EnableNFTables,
		StrictEncryption: raw.StrictEncryption}
	if network.Masked() != network {
		cfg.Notes = append(cfg.Notes, fmt.Sprintf(`key "Network": %s has host bits set; using %s, as flannel does`, network, network.Masked()))
	}
	if err := cfg.setSubnetLen(raw.SubnetLen); err != nil {
		return nil, err
	}
	if err := cfg.setRange(raw.SubnetMin, raw.SubnetMax); err != nil {
		return nil, err
	}
	if err := cfg.setBackend(raw.Backend); err != nil {
		return nil, err
	}
	if err := cfg.setIPv6(raw); err != nil {
		return nil, err
	}
	if err := cfg.setPeersNetwork(raw.PeersNetwork); err != nil {
		return nil, err
	}
	return cfg, nil
}

// setPeersNetwork reads "PeersNetwork": an IPv4 CIDR outside the Network,
// for the wireguard backend's outside peers.
func (c *Config) setPeersNetwork(text *string) error {
	if text == nil || *text == "" {
		return nil
	}
	p, err := netip.ParsePrefix(*text)
	switch {
	case err != nil || !p.Addr().Is4():
		return ConfigError(`key "PeersNetwork": %q is not an IPv4 CIDR such as "10.6.0.0/24"`, *text)
	case p.Bits() > 30:
		return ConfigError(`key "PeersNetwork": %s holds no peer; use a /30 or wider`, p)
	case p.Bits() < 16:
		// Every host routes PeersNetwork into its WireGuard device: a wide
		// one takes the underlay, etcd and the peers with it.
		return ConfigError(`key "PeersNetwork": %s is wider than a /16, and every host routes it into WireGuard; use a /16 or narrower, such as "10.6.0.0/24"`, p)
	case !unicastRange(p.Masked()):
		return ConfigError(`key "PeersNetwork": %s is not unicast space (it holds 0.0.0.0/8, 127.0.0.0/8, link-local, multicast or reserved addresses); use private addresses such as "10.6.0.0/24"`, p)
	case c.Network.IsValid() && p.Overlaps(c.Network):
		return ConfigError(`key "PeersNetwork": %s overlaps Network %s; outside peers need addresses of their own`, p, c.Network)
	}
	c.PeersNetwork = p.Masked()
	return nil
}

// notUnicast are the IPv4 ranges no peer's address may lie in: "this
// network", loopback, link-local, multicast and the reserved block with
// the limited broadcast address.
var notUnicast = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("240.0.0.0/4"),
}

// unicastRange reports whether p overlaps none of notUnicast.
func unicastRange(p netip.Prefix) bool {
	for _, bad := range notUnicast {
		if p.Overlaps(bad) {
			return false
		}
	}
	return true
}

func (c *Config) setSubnetLen(subnetLen *int) error {
	bits := c.Network.Bits()
	if subnetLen != nil && *subnetLen != 0 {
		n := *subnetLen
		switch {
		case n < 0 || n > 30:
			// A host needs room for its bridge and at least one container.
			return ConfigError(`key "SubnetLen": %d is out of range; it must be between /%d and /30`, n, min(bits+2, 30))
		case n < bits+2:
			// The first subnet is never used, so fewer than four leaves one host.
			return ConfigError(`key "SubnetLen": /%d leaves Network %s room for fewer than four subnets; use /%d or longer`, n, c.Network, bits+2)
		}
		c.SubnetLen = n
		return nil
	}
	switch {
	case bits > 28:
		return ConfigError(`key "Network": %s is too small; the smallest useful Network is a /28`, c.Network)
	case bits <= 22:
		c.SubnetLen = 24
	default:
		c.SubnetLen = bits + 2
	}
	return nil
}

func (c *Config) setRange(minText, maxText *string) error {
	size := uint32(1) << (32 - c.SubnetLen)
	first := addrToU32(c.Network.Addr())
	last := first + uint32(1)<<(32-c.Network.Bits()) - 1
	// Skip the first subnet: a bridge at 10.5.0.1 would sit next to the
	// Network's own address, which breaks broadcast on some hosts.
	c.SubnetMin = u32ToAddr(first + size)
	c.SubnetMax = u32ToAddr(last - size + 1)
	return setBounds(bounds{"SubnetMin", minText, &c.SubnetMin}, bounds{"SubnetMax", maxText, &c.SubnetMax},
		c.Network, "Network", c.SubnetLen, "SubnetLen")
}

// bounds is one of SubnetMin/SubnetMax (or their IPv6 twins): its key, its
// text in the config (nil or "" keeps the default already in dst).
type bounds struct {
	key  string
	text *string
	dst  *netip.Addr
}

// setBounds reads the lower and upper subnet bounds: each an address of
// network's family, inside it (netKey names it), on a /bits boundary
// (lenKey names that), the lower not above the upper.
func setBounds(lo, hi bounds, network netip.Prefix, netKey string, bits int, lenKey string) error {
	family := "IPv4"
	if network.Addr().Is6() {
		family = "IPv6"
	}
	for _, b := range []bounds{lo, hi} {
		if b.text == nil || *b.text == "" {
			continue
		}
		addr, err := netip.ParseAddr(*b.text)
		if err != nil || addr.Is4() != network.Addr().Is4() || addr.Is4In6() {
			return ConfigError("key %q: %q is not an %s address", b.key, *b.text, family)
		}
		if !network.Contains(addr) {
			return ConfigError("key %q: %s is outside %s %s", b.key, addr, netKey, network)
		}
		if netip.PrefixFrom(addr, bits).Masked().Addr() != addr {
			return ConfigError("key %q: %s is not on a /%d boundary (%s)", b.key, addr, bits, lenKey)
		}
		*b.dst = addr
	}
	if lo.dst.Compare(*hi.dst) > 0 {
		return ConfigError(`keys %q and %q: %s %s is above %s %s`, lo.key, hi.key, lo.key, *lo.dst, hi.key, *hi.dst)
	}
	return nil
}

func (c *Config) setBackend(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		c.Backend = BackendConfig{Type: DefaultBackend, Raw: json.RawMessage(`{"Type":"` + DefaultBackend + `"}`)}
		c.BackendDefaulted = true
		return nil
	}
	var head struct {
		Type *string `json:"Type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return ConfigError(`key "Backend": must be an object such as {"Type": "`+DefaultBackend+`"}: %v`, err)
	}
	typ := DefaultBackend
	if head.Type != nil && *head.Type != "" {
		typ = *head.Type
	} else {
		c.BackendDefaulted = true
	}
	if lower := strings.ToLower(typ); lower != typ {
		c.Notes = append(c.Notes, fmt.Sprintf(`key "Backend.Type": %q read as %q, as flannel does`, typ, lower))
		typ = lower
	}
	c.Backend = BackendConfig{Type: typ, Raw: slices.Clone(raw)}
	return nil
}

// Subnets returns how many subnets lie between SubnetMin and SubnetMax.
func (c *Config) Subnets() int {
	return int((addrToU32(c.SubnetMax)-addrToU32(c.SubnetMin))>>(32-c.SubnetLen)) + 1
}

// Fits reports whether subnet is one this config can hand out: inside the
// Network, of SubnetLen, aligned, and within SubnetMin..SubnetMax.
func (c *Config) Fits(subnet netip.Prefix) bool {
	if !c.EnableIPv4 {
		return !subnet.IsValid() // an IPv6-only network leases no IPv4
	}
	return subnet.IsValid() && subnet.Bits() == c.SubnetLen && subnet.Masked() == subnet &&
		c.Network.Contains(subnet.Addr()) &&
		subnet.Addr().Compare(c.SubnetMin) >= 0 && subnet.Addr().Compare(c.SubnetMax) <= 0
}

// ConfigError is an error of a config's validation: it wraps
// ErrInvalidConfig and says what is wrong, naming the key.
func ConfigError(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

func addrToU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32ToAddr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
