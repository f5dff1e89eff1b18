package lease

import (
	"fmt"
	"math/big"
	mathrand "math/rand"
	"math/rand/v2"
	"net/netip"
)

// rng adapts math/rand/v2's global generator to the old Source big.Int.Rand
// takes; subnet choice needs spread, not secrecy.
type rng struct{}

func (rng) Int63() int64 { return rand.Int64() }
func (rng) Seed(int64)   {}

// setIPv6 reads the IPv6 half of a dual-stack config with flannel's rules
// and defaults (IPv6SubnetLen /64, or the IPv6Network's length + 2 when
// that is shorter than /62; the first and last subnet left out). Without
// EnableIPv6 the IPv6 keys are ignored, as flannel ignores them.
func (c *Config) setIPv6(raw rawConfig) error {
	if !raw.EnableIPv6 {
		return nil
	}
	if raw.IPv6Network == nil || *raw.IPv6Network == "" {
		return ConfigError(`key "IPv6Network" is missing; "EnableIPv6": true needs an IPv6 CIDR such as "fc00:5::/48"`)
	}
	network, err := netip.ParsePrefix(*raw.IPv6Network)
	if err != nil || !network.Addr().Is6() || network.Addr().Is4In6() {
		return ConfigError(`key "IPv6Network": %q is not an IPv6 CIDR such as "fc00:5::/48"`, *raw.IPv6Network)
	}
	c.IPv6Network = network.Masked()
	if network.Masked() != network {
		c.Notes = append(c.Notes, fmt.Sprintf(`key "IPv6Network": %s has host bits set; using %s, as flannel does`, network, network.Masked()))
	}
	bits := c.IPv6Network.Bits()
	switch n := raw.IPv6SubnetLen; {
	case n != nil && *n != 0 && (*n < 0 || *n > 126):
		return ConfigError(`key "IPv6SubnetLen": %d is out of range; it must be between /%d and /126`, *n, min(bits+2, 126))
	case n != nil && *n != 0 && *n < bits+2:
		return ConfigError(`key "IPv6SubnetLen": /%d leaves IPv6Network %s room for fewer than four subnets; use /%d or longer`, *n, c.IPv6Network, bits+2)
	case n != nil && *n != 0:
		c.IPv6SubnetLen = *n
	case bits > 124:
		return ConfigError(`key "IPv6Network": %s is too small; the smallest useful IPv6Network is a /124`, c.IPv6Network)
	case bits <= 62:
		c.IPv6SubnetLen = 64
	default:
		c.IPv6SubnetLen = bits + 2
	}
	size := new(big.Int).Lsh(big.NewInt(1), uint(128-c.IPv6SubnetLen))
	first := addrToBig(c.IPv6Network.Addr())
	last := new(big.Int).Add(first, new(big.Int).Lsh(big.NewInt(1), uint(128-bits)))
	c.IPv6SubnetMin = bigToAddr(new(big.Int).Add(first, size))
	c.IPv6SubnetMax = bigToAddr(last.Sub(last, size))
	if err := setBounds(bounds{"IPv6SubnetMin", raw.IPv6SubnetMin, &c.IPv6SubnetMin}, bounds{"IPv6SubnetMax", raw.IPv6SubnetMax, &c.IPv6SubnetMax},
		c.IPv6Network, "IPv6Network", c.IPv6SubnetLen, "IPv6SubnetLen"); err != nil {
		return err
	}
	return nil
}

// parseIPv6Only reads an IPv6-only network's config ("EnableIPv4": false):
// it must enable IPv6, and the IPv4 keys are ignored, as flannel ignores
// them.
func parseIPv6Only(raw rawConfig) (*Config, error) {
	if !raw.EnableIPv6 {
		return nil, ConfigError(`keys "EnableIPv4" and "EnableIPv6": both are false, which leaves no address family; drop "EnableIPv4": false, or set "EnableIPv6": true with an "IPv6Network"`)
	}
	cfg := &Config{EnableIPv6: true, EnableNFTables: raw.EnableNFTables, StrictEncryption: raw.StrictEncryption}
	if raw.Network != nil || raw.SubnetLen != nil || raw.SubnetMin != nil || raw.SubnetMax != nil {
		cfg.Notes = append(cfg.Notes, `keys "Network", "SubnetLen", "SubnetMin", "SubnetMax" are ignored: "EnableIPv4": false makes this an IPv6-only network, as in flannel`)
	}
	if err := cfg.setBackend(raw.Backend); err != nil {
		return nil, err
	}
	if err := cfg.setIPv6(raw); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Fits6 reports whether subnet is an IPv6 subnet this config can hand out
// (inside IPv6Network, of IPv6SubnetLen, aligned, within IPv6SubnetMin..Max)
// or, when the config has no IPv6, that there is none: flannel's rule for
// reusing a lease.
func (c *Config) Fits6(subnet netip.Prefix) bool {
	if !c.EnableIPv6 {
		return !subnet.IsValid()
	}
	return subnet.IsValid() && subnet.Addr().Is6() && subnet.Bits() == c.IPv6SubnetLen && subnet.Masked() == subnet &&
		c.IPv6Network.Contains(subnet.Addr()) &&
		subnet.Addr().Compare(c.IPv6SubnetMin) >= 0 && subnet.Addr().Compare(c.IPv6SubnetMax) <= 0
}

// pickFree6 chooses a random IPv6 subnet between IPv6SubnetMin and
// IPv6SubnetMax that overlaps no taken one. The range is usually far too
// large to enumerate (2^16 /64s in a /48), so it probes at random and then
// walks up from a random start for as many subnets as are taken, plus one:
// one of those must be free when the range holds that many.
func pickFree6(cfg *Config, taken []netip.Prefix) (netip.Prefix, bool) {
	shift := uint(128 - cfg.IPv6SubnetLen)
	first := addrToBig(cfg.IPv6SubnetMin)
	count := new(big.Int).Sub(addrToBig(cfg.IPv6SubnetMax), first)
	count.Rsh(count, shift).Add(count, big.NewInt(1))
	nth := func(i *big.Int) netip.Prefix {
		v := new(big.Int).Lsh(i, shift)
		return netip.PrefixFrom(bigToAddr(v.Add(v, first)), cfg.IPv6SubnetLen)
	}
	r := mathrand.New(rng{})
	for range 64 {
		if s := nth(new(big.Int).Rand(r, count)); !overlapsAny(s, taken) {
			return s, true
		}
	}
	start := new(big.Int).Rand(r, count)
	for i := 0; i <= len(taken); i++ {
		idx := new(big.Int).Add(start, big.NewInt(int64(i)))
		if s := nth(idx.Mod(idx, count)); !overlapsAny(s, taken) {
			return s, true
		}
	}
	return netip.Prefix{}, false
}

func addrToBig(a netip.Addr) *big.Int {
	b := a.As16()
	return new(big.Int).SetBytes(b[:])
}

func bigToAddr(v *big.Int) netip.Addr {
	var b [16]byte
	v.FillBytes(b[:])
	return netip.AddrFrom16(b)
}
