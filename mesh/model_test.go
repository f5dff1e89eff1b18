package mesh

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

// TestModelFindsPeersByKey checks the model's lookups on the three kinds
// of network: IPv4 peers (one with a dual-stack key whose IPv6 half the
// network does not route), dual-stack peers, and IPv6-only peers that all
// share the empty IPv4 subnet; then deltas on top.
func TestModelFindsPeersByKey(t *testing.T) {
	v4 := func(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", i)) }
	v6 := func(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("fc00:5:0:%x::/64", i)) }
	var ipv4, dual, ipv6 Desired
	for i := 1; i <= 40; i++ {
		key := fmt.Sprintf("10.5.%d.0-24", i)
		if i%7 == 0 { // a flannel host's dual-stack key on an IPv4-only network
			key = fmt.Sprintf("10.5.%d.0-24&fc00:5:0:%x::-64", i, i)
		}
		ipv4.Peers = append(ipv4.Peers, Peer{Key: key, Subnet: v4(i)})
		dual.Peers = append(dual.Peers, Peer{Key: fmt.Sprintf("10.5.%d.0-24&fc00:5:0:%x::-64", i, i), Subnet: v4(i)}.WithIPv6(v6(i), netip.Addr{}, nil))
		ipv6.Peers = append(ipv6.Peers, Peer{Key: fmt.Sprintf("0.0.0.0-0&fc00:5:0:%x::-64", i)}.WithIPv6(v6(i), netip.Addr{}, nil))
	}
	for name, d := range map[string]Desired{"ipv4": ipv4, "dual": dual, "ipv6": ipv6} {
		keys := make([]string, len(d.Peers))
		for i, p := range d.Peers {
			keys[i] = p.Key
		}
		d.sort()
		m := newModel(d)
		for _, k := range keys {
			if p, ok := m.peer(k); !ok || p.Key != k {
				t.Errorf("%s: peer %s not found (%v)", name, k, p)
			}
		}
		for _, k := range []string{"10.5.99.0-24", "0.0.0.0-0&fc00:5:0:99::-64", "10.5.3.0-24&fc00:5:0:99::-64", "not a key"} {
			if _, ok := m.peer(k); ok {
				t.Errorf("%s: %s found", name, k)
			}
		}
		// Deltas: one peer leaves, one changes, one comes.
		gone, changed := keys[3], keys[5]
		m.remove(gone)
		was, _ := m.peer(changed)
		moved := *was
		moved.PublicIP = netip.MustParseAddr("192.168.9.9")
		m.put(changed, &moved)
		m.put("10.5.77.0-24", &Peer{Key: "10.5.77.0-24", Subnet: v4(77)})
		m.put("10.5.0.0-24", &Peer{Key: "10.5.0.0-24", Subnet: v4(0)})
		if _, ok := m.peer(gone); ok {
			t.Errorf("%s: %s still found after it left", name, gone)
		}
		if p, _ := m.peer(changed); p.PublicIP != moved.PublicIP {
			t.Errorf("%s: %s is %v, want the changed peer", name, changed, p.PublicIP)
		}
		seen := map[string]int{}
		m.each(func(p *Peer) { seen[p.Key]++ })
		if m.count() != 41 || len(seen) != 41 || seen[gone] != 0 || seen[changed] != 1 || seen["10.5.77.0-24"] != 1 || seen["10.5.0.0-24"] != 1 {
			t.Errorf("%s: count %d, each saw %d peers: %v", name, m.count(), len(seen), seen)
		}
		// The deltas kept the order, so every peer is still found.
		if !slices.IsSortedFunc(m.base, func(a, b Peer) int {
			if peerLess(&a, &b) {
				return -1
			}
			return 0
		}) {
			t.Errorf("%s: the model's peers are out of order after deltas", name)
		}
		for key := range seen {
			if _, ok := m.peer(key); !ok {
				t.Errorf("%s: %s not found after the deltas", name, key)
			}
		}
	}
}
