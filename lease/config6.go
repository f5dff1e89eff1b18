package lease

import (
	"fmt"
	"math/big"
	"net/netip"
)

// setIPv6 reads the IPv6 half of a dual-stack config with flannel's rules
// and defaults (IPv6SubnetLen /64, or the IPv6Network's length + 2 when
// that is shorter than /62; the first and last subnet left out). Without
// EnableIPv6 the IPv6 keys are ignored, as flannel ignores them.
func (c *Config) setIPv6(raw rawConfig) error {
	if !raw.EnableIPv6 {
		return nil
	}
	if raw.IPv6Network == nil || *raw.IPv6Network == "" {
		return configErr(`key "IPv6Network" is missing; "EnableIPv6": true needs an IPv6 CIDR such as "fc00:5::/48"`)
	}
	network, err := netip.ParsePrefix(*raw.IPv6Network)
	if err != nil || !network.Addr().Is6() || network.Addr().Is4In6() {
		return configErr(`key "IPv6Network": %q is not an IPv6 CIDR such as "fc00:5::/48"`, *raw.IPv6Network)
	}
	c.IPv6Network = network.Masked()
	if network.Masked() != network {
		c.Notes = append(c.Notes, fmt.Sprintf(`key "IPv6Network": %s has host bits set; using %s, as flannel does`, network, network.Masked()))
	}
	bits := c.IPv6Network.Bits()
	switch n := raw.IPv6SubnetLen; {
	case n != nil && *n != 0 && (*n < 0 || *n > 126):
		return configErr(`key "IPv6SubnetLen": %d is out of range; it must be between /%d and /126`, *n, min(bits+2, 126))
	case n != nil && *n != 0 && *n < bits+2:
		return configErr(`key "IPv6SubnetLen": /%d leaves IPv6Network %s room for fewer than four subnets; use /%d or longer`, *n, c.IPv6Network, bits+2)
	case n != nil && *n != 0:
		c.IPv6SubnetLen = *n
	case bits > 124:
		return configErr(`key "IPv6Network": %s is too small; the smallest useful IPv6Network is a /124`, c.IPv6Network)
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
	c.Notes = append(c.Notes, `key "EnableIPv6": the IPv6 half is checked but weft does not carry IPv6 yet; hosts lease and route IPv4 only`)
	return nil
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
