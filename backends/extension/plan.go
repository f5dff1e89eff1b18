package extension

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftnet/weft/mesh"
)

// Subnet is what the peer commands are told about one peer.
type Subnet struct {
	Key                  string
	Subnet, IPv6Subnet   netip.Prefix
	PublicIP, PublicIPv6 netip.Addr
	// Data is the peer's BackendData: its PreStartupCommand output,
	// decoded from the JSON string the lease holds.
	Data string
}

// Env is the peer's part of a command's environment: SUBNET and PUBLIC_IP
// (flannel's code), IPV6SUBNET and PUBLIC_IPV6 (flannel's documentation),
// each empty when the peer has no such half (an IPv4-only peer, or an
// IPv6-only network's lease with no IPv4 subnet and PublicIP 0.0.0.0).
func (s Subnet) Env() []string {
	v4 := s.Subnet.IsValid() && s.Subnet.Bits() > 0
	return []string{"SUBNET=" + text(s.Subnet, v4), "PUBLIC_IP=" + text(s.PublicIP, v4 && !s.PublicIP.IsUnspecified()),
		"IPV6SUBNET=" + text(s.IPv6Subnet, s.IPv6Subnet.IsValid()), "PUBLIC_IPV6=" + text(s.PublicIPv6, s.PublicIPv6.IsValid())}
}

// text is v's text when ok, else empty.
func text(v fmt.Stringer, ok bool) string {
	if !ok {
		return ""
	}
	return v.String()
}

// Wanted are the peers the commands should have added, by lease key. A
// peer whose BackendData is not a JSON string is skipped with its reason:
// flannel's extension hosts write their PreStartupCommand output as one.
func Wanted(d mesh.Desired) (map[string]Subnet, []error) {
	want := make(map[string]Subnet, len(d.Peers))
	var skipped []error
	for _, p := range d.Peers {
		s := Subnet{Key: p.Key, Subnet: p.Subnet, IPv6Subnet: p.IPv6Subnet(), PublicIP: p.PublicIP, PublicIPv6: p.PublicIPv6()}
		if len(p.BackendData) > 0 && string(p.BackendData) != "null" {
			if err := json.Unmarshal(p.BackendData, &s.Data); err != nil {
				skipped = append(skipped, mesh.SkipPeer(p.Key,
					"BackendData %.60s is not a JSON string (an extension host publishes its PreStartupCommand output as one)", p.BackendData))
				continue
			}
		}
		want[p.Key] = s
	}
	return want, skipped
}

// Plan says which commands bring done (the peers whose add command last
// succeeded) to want: a remove for each peer gone, then an add for each
// peer new or changed (flannel runs the add command again for a changed
// lease, with no remove first). Both lists are sorted by key.
func Plan(want, done map[string]Subnet) (remove, add []Subnet) {
	for k, s := range done {
		if _, ok := want[k]; !ok {
			remove = append(remove, s)
		}
	}
	for k, s := range want {
		if old, ok := done[k]; !ok || old != s {
			add = append(add, s)
		}
	}
	byKey := func(a, b Subnet) int { return strings.Compare(a.Key, b.Key) }
	slices.SortFunc(remove, byKey)
	slices.SortFunc(add, byKey)
	return remove, add
}
