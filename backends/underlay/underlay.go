// Package underlay holds the plain values the backends' plans are made of,
// without netlink: the external interface a host sends through and the
// route to a peer's subnet. Plans import this package; only apply code
// (through netkernel's Kernel) turns them into kernel objects.
package underlay

import "net/netip"

// ExternalInterface is the underlay interface weft sends traffic through.
type ExternalInterface struct {
	Name  string
	Index int
	MTU   int
	// Addr is the address published as PublicIP's source on this link.
	Addr netip.Addr
	// AddrIPv6 is the link's global IPv6 address (the source of IPv6
	// underlay traffic, published as PublicIPv6), invalid when it has none.
	AddrIPv6 netip.Addr
	// Prefixes are the link's connected IPv4 and IPv6 networks (its L2
	// segment).
	Prefixes []netip.Prefix
}

// OnLink reports whether ip lies in one of the interface's connected networks.
func (e ExternalInterface) OnLink(ip netip.Addr) bool {
	for _, p := range e.Prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Route is a route to a peer's subnet Dst, the one plan type of every
// routing backend (host-gw, vxlan, ipip, wireguard's DirectRouting): via
// the peer's address on the far side of a tunnel device (onlink), or,
// Direct, a plain route via the peer's address on the external link.
type Route struct {
	Dst    netip.Prefix
	Via    netip.Addr
	Direct bool
}
