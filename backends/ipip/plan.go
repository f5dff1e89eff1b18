package ipip

import (
	"encoding/json"
	"fmt"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Overhead is what IP-in-IP adds: one IPv4 header.
const Overhead = 20

// DeviceName is weft's ipip device, flannel's flannel.ipip renamed.
const DeviceName = "weft.ipip"

// Options are the "Backend" keys of an ipip network config, as flannel's.
type Options struct {
	DirectRouting bool
}

// ParseOptions reads the Backend object; errors name the option.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var in struct {
		DirectRouting bool `json:"DirectRouting"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return Options{}, fmt.Errorf("ipip Backend options: %w", err)
		}
	}
	return Options{DirectRouting: in.DirectRouting}, nil
}

// Plan turns the desired state into routes: one per peer, the peer's
// subnet via its PublicIP, through the ipip device or, DirectRouting,
// on the external link. ipip carries
// IPv4 only, as flannel's.
func Plan(d mesh.Desired, opts Options, ext underlay.ExternalInterface) []underlay.Route {
	routes := make([]underlay.Route, 0, len(d.Peers))
	for _, p := range d.Peers {
		if p.Standby {
			continue // a switch to ipip under way: the route comes with its move
		}
		routes = append(routes, underlay.Route{Dst: p.Subnet, Via: p.PublicIP, Direct: opts.DirectRouting && ext.OnLink(p.PublicIP)})
	}
	return routes
}
