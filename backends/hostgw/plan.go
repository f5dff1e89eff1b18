package hostgw

import (
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Plan turns the desired state into routes: the peer's subnet via its
// PublicIP and, on a dual-stack network, its IPv6 subnet via its
// PublicIPv6. A peer whose address is not on the external link's segment
// cannot be reached without a tunnel; it gets an error naming it instead of
// a route.
func Plan(d mesh.Desired, ext underlay.ExternalInterface) ([]underlay.Route, []error) {
	var routes []underlay.Route
	var problems []error
	for _, p := range d.Peers {
		if p.Standby {
			continue // a switch to host-gw under way: nothing to prepare
		}
		if !ext.OnLink(p.PublicIP) {
			problems = append(problems, mesh.SkipPeer(p.Key,
				"PublicIP %s is not on the same L2 segment as %s (%v); host-gw needs all hosts on one link: use vxlan or wireguard",
				p.PublicIP, ext.Name, ext.Prefixes))
			continue
		}
		routes = append(routes, underlay.Route{Dst: p.Subnet, Via: p.PublicIP, Direct: true})
		if !p.IPv6Subnet().IsValid() {
			continue
		}
		if !ext.OnLink(p.PublicIPv6()) {
			problems = append(problems, mesh.SkipPeer(p.Key,
				"PublicIPv6 %s is not on the same L2 segment as %s (%v); its IPv6 subnet %s is not routed: use vxlan or wireguard",
				p.PublicIPv6(), ext.Name, ext.Prefixes, p.IPv6Subnet()))
			continue
		}
		routes = append(routes, underlay.Route{Dst: p.IPv6Subnet(), Via: p.PublicIPv6(), Direct: true})
	}
	return routes, problems
}
