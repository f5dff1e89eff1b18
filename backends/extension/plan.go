package extension

import (
	"encoding/json"
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

// Env is the peer's part of a command's environment: flannel's SUBNET and
// PUBLIC_IP, and IPV6SUBNET and PUBLIC_IPV6 when the peer has them.
func (s Subnet) Env() []string {
	env := []string{"SUBNET=" + s.Subnet.String(), "PUBLIC_IP=" + s.PublicIP.String()}
	if s.IPv6Subnet.IsValid() {
		env = append(env, "IPV6SUBNET="+s.IPv6Subnet.String())
	}
	if s.PublicIPv6.IsValid() {
		env = append(env, "PUBLIC_IPV6="+s.PublicIPv6.String())
	}
	return env
}

// Wanted are the peers the commands should have added, by lease key. A
// peer whose BackendData is not a JSON string is skipped with its reason:
// flannel's extension hosts write their PreStartupCommand output as one.
func Wanted(d mesh.Desired) (map[string]Subnet, []error) {
	want := make(map[string]Subnet, len(d.Peers))
	var skipped []error
	for _, p := range d.Peers {
		s := Subnet{Key: p.Key, Subnet: p.Subnet, IPv6Subnet: p.IPv6Subnet, PublicIP: p.PublicIP, PublicIPv6: p.PublicIPv6}
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
