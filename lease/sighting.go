package lease

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// Endpoint discovery (weft only). A host's WireGuard device learns where a
// peer's authenticated packets really come from (WireGuard roams to it);
// when that differs from the endpoint the peer's lease names, the peer is
// behind NAT and the address is the one its NAT maps it to. The host
// publishes what it sees in its own lease ("WeftSeen"), and every host
// reads what the others see: a host learns the endpoint its own packets
// leave NAT with, and two hosts behind NAT learn where to send to reach
// each other directly.

// Sighting is one host's view of a peer: the lease key of the peer and the
// endpoint its packets came from.
type Sighting struct {
	Lease    string
	Endpoint netip.AddrPort
}

// MaxSightings bounds the sightings a lease carries (and so the work a
// hostile lease can cause).
const MaxSightings = 64

type sightingJSON struct {
	Lease    string `json:"Lease"`
	Endpoint string `json:"Endpoint"`
}

// MarshalJSON writes {"Lease":"10.5.3.0-24","Endpoint":"192.0.2.7:51820"}.
func (s Sighting) MarshalJSON() ([]byte, error) {
	return json.Marshal(sightingJSON{Lease: s.Lease, Endpoint: s.Endpoint.String()})
}

// UnmarshalJSON reads a sighting and checks it as every value from etcd is
// checked where it is decoded (ParseSighting).
func (s *Sighting) UnmarshalJSON(data []byte) error {
	var in sightingJSON
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	out, err := ParseSighting(in.Lease, in.Endpoint)
	if err != nil {
		return err
	}
	*s = out
	return nil
}

// ParseSighting checks a sighting's parts: a lease key, and an endpoint a
// host can be sent to: a unicast address (not loopback, link-local,
// multicast or unspecified, no zone, not IPv4-mapped) and a port.
func ParseSighting(key, endpoint string) (Sighting, error) {
	if _, _, err := ParseSubnetKeys(key); err != nil {
		return Sighting{}, fmt.Errorf("sighting of %.40q: not a lease key", key)
	}
	ep, err := ParseEndpoint(endpoint)
	if err != nil {
		return Sighting{}, fmt.Errorf("sighting of %s: %w", key, err)
	}
	return Sighting{Lease: key, Endpoint: ep}, nil
}

// ParseEndpoint reads an underlay endpoint, ip:port or [ipv6]:port, that a
// host may send WireGuard packets to.
func ParseEndpoint(text string) (netip.AddrPort, error) {
	ep, err := netip.ParseAddrPort(text)
	switch {
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("endpoint %.60q is not ip:port", text)
	case ep.Addr().Zone() != "":
		return netip.AddrPort{}, fmt.Errorf("endpoint %s carries a zone; an underlay address names no local interface", ep.Addr().WithZone(""))
	case ep.Addr().Is4In6():
		return netip.AddrPort{}, fmt.Errorf("endpoint %s is an IPv4-mapped address", ep.Addr())
	case ep.Port() == 0:
		return netip.AddrPort{}, fmt.Errorf("endpoint %s has port 0", ep)
	case !ep.Addr().IsGlobalUnicast():
		return netip.AddrPort{}, fmt.Errorf("endpoint %s is not a unicast address a host can be sent to", ep.Addr())
	}
	return ep, nil
}

// checkSightings bounds and orders a lease's sightings: at most
// MaxSightings, one per lease key.
func checkSightings(seen []Sighting) error {
	if len(seen) > MaxSightings {
		return fmt.Errorf("WeftSeen holds %d sightings, more than %d", len(seen), MaxSightings)
	}
	keys := make([]string, 0, len(seen))
	for _, s := range seen {
		keys = append(keys, s.Lease)
	}
	slices.Sort(keys)
	for i := 1; i < len(keys); i++ {
		if keys[i] == keys[i-1] {
			return fmt.Errorf("WeftSeen names lease %s twice", keys[i])
		}
	}
	return nil
}

// checkReach checks a lease's WeftReach: lease keys, at most
// MaxSightings, each once.
func checkReach(reach []string) error {
	if len(reach) > MaxSightings {
		return fmt.Errorf("WeftReach names %d leases, more than %d", len(reach), MaxSightings)
	}
	seen := make(map[string]bool, len(reach))
	for _, k := range reach {
		if _, _, err := ParseSubnetKeys(k); err != nil {
			return fmt.Errorf("WeftReach: %.40q is not a lease key", k)
		}
		if seen[k] {
			return fmt.Errorf("WeftReach names lease %s twice", k)
		}
		seen[k] = true
	}
	return nil
}
