package hostgw

import (
	"net/netip"

	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/mesh"
)

// Route is one route host-gw wants: Dst via Gateway on the external link.
type Route struct {
	Dst     netip.Prefix
	Gateway netip.Addr
}

// Plan turns the desired state into routes. A peer whose PublicIP is not on
// the external link's segment cannot be reached without a tunnel; it gets
// an error naming it instead of a route.
func Plan(d mesh.Desired, ext netutil.ExternalInterface) ([]Route, []error) {
	var routes []Route
	var problems []error
	for _, p := range d.Peers {
		if !ext.OnLink(p.PublicIP) {
			problems = append(problems, mesh.SkipPeer(p.Key,
				"PublicIP %s is not on the same L2 segment as %s (%v); host-gw needs all hosts on one link: use vxlan or wireguard",
				p.PublicIP, ext.Name, ext.Prefixes))
			continue
		}
		routes = append(routes, Route{Dst: p.Subnet, Gateway: p.PublicIP})
	}
	return routes, problems
}
