package hostgw

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

func peer(subnet, ip string) mesh.Peer {
	p := netip.MustParsePrefix(subnet)
	return mesh.Peer{Key: lease.SubnetKey(p), Subnet: p, PublicIP: netip.MustParseAddr(ip), BackendType: "host-gw"}
}

var ext = underlay.ExternalInterface{Name: "ext0", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}}

func TestPlan(t *testing.T) {
	d := mesh.Desired{Peers: []mesh.Peer{peer("10.5.2.0/24", "192.168.77.2"), peer("10.5.3.0/24", "172.16.9.3")}}
	routes, problems := Plan(d, ext)
	if len(routes) != 1 || routes[0] != (underlay.Route{Dst: netip.MustParsePrefix("10.5.2.0/24"), Via: netip.MustParseAddr("192.168.77.2"), Direct: true}) {
		t.Errorf("routes = %v", routes)
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(),
		"peer 10.5.3.0-24: PublicIP 172.16.9.3 is not on the same L2 segment as ext0") {
		t.Errorf("problems = %v", problems)
	}
}
