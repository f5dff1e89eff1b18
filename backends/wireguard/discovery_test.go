package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestDiscovery: from the hosts' sightings a host learns where each peer
// is seen (the most seen endpoint), and where it is seen itself (then it
// is behind NAT and keeps every path open); a sighting inside the overlay
// or of a host by itself counts for nothing. A peer seen elsewhere is sent
// to there, with a keepalive, unless it is on this host's own network.
func TestDiscovery(t *testing.T) {
	ep := netip.MustParseAddrPort
	seen := func(pairs ...string) []lease.Sighting {
		var out []lease.Sighting
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, lease.Sighting{Lease: pairs[i], Endpoint: ep(pairs[i+1])})
		}
		return out
	}
	k2, k3, k4 := mustKey(t), mustKey(t), mustKey(t)
	peer := func(key string, ip string, k keys.Key, s []lease.Sighting) mesh.Peer {
		data, _ := json.Marshal(BackendData{PublicKey: k.Public().String(), Port: 51820})
		return mesh.Peer{Key: key, Subnet: netip.MustParsePrefix(key[:len(key)-3] + "/24"), PublicIP: netip.MustParseAddr(ip), BackendData: data}.WithSightings(s, nil)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.2.2")}}
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self, Peers: []mesh.Peer{
		// host 1, public: sees hosts 2 and 3 at their routers.
		peer("10.5.1.0-24", "192.168.50.11", k2, seen("10.5.2.0-24", "192.168.50.12:51820", "10.5.3.0-24", "192.168.50.13:51820", "10.5.4.0-24", "10.5.9.9:51820")),
		// host 3, behind NAT: sees itself (ignored) and host 2 elsewhere.
		peer("10.5.3.0-24", "172.31.3.2", k3, seen("10.5.3.0-24", "203.0.113.3:1", "10.5.2.0-24", "192.168.50.99:4000")),
		// host 4, on this host's own network.
		peer("10.5.4.0-24", "172.31.2.7", k4, seen("10.5.3.0-24", "192.168.50.13:51820")),
	}}
	found := discover(d)
	if found.self != ep("192.168.50.12:51820") {
		t.Errorf("self seen at %v, want 192.168.50.12:51820 (a tie goes to the lowest)", found.self)
	}
	if found.peers["10.5.3.0-24"] != ep("192.168.50.13:51820") || len(found.peers) != 1 {
		t.Errorf("peers seen at %v, want host 3 at 192.168.50.13:51820 alone (host 4's sighting is inside the Network)", found.peers)
	}
	opts := Options{localPrefixes: []netip.Prefix{netip.MustParsePrefix("172.31.2.0/24")}}
	specs, problems := candidates(d, mustKey(t).Public(), opts, found)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	for _, s := range specs {
		want := s.Advertised
		if s.Lease == "10.5.3.0-24" {
			want = ep("192.168.50.13:51820")
		}
		if s.Endpoint != want || s.Keepalive != pathKeepalive {
			t.Errorf("%s: endpoint %v keepalive %v, want %v and %v (this host is behind NAT)", s.Lease, s.Endpoint, s.Keepalive, want, pathKeepalive)
		}
	}
	// What this host's device sees: host 3 where its packets come from.
	now := time.Now()
	have := []PeerState{
		{PublicKey: k3.Public(), Endpoint: ep("192.168.50.13:51820"), LastHandshake: now.Add(-time.Second)},
		{PublicKey: k2.Public(), Endpoint: ep("192.168.50.11:51820"), LastHandshake: now.Add(-time.Second)},
		{PublicKey: k4.Public(), Endpoint: ep("192.168.50.77:51820"), LastHandshake: now.Add(-RejectAfter)},
	}
	if got := sightings(have, specs, now); len(got) != 1 || got[0] != (lease.Sighting{Lease: "10.5.3.0-24", Endpoint: ep("192.168.50.13:51820")}) {
		t.Errorf("sightings %v, want host 3 at its router alone (host 1 is where its lease says, host 4's handshake is stale)", got)
	}
	if !changesSightings(mesh.Delta{Old: d.Peers[:1], New: []mesh.Peer{peer("10.5.1.0-24", "192.168.50.11", k2, nil)}}) {
		t.Error("a delta dropping host 1's sightings is not applied whole")
	}
	if changesSightings(mesh.Delta{Old: d.Peers[:1], New: d.Peers[:1]}) {
		t.Error("a delta keeping the sightings is applied whole")
	}
}

// TestChooseRelays: a pair of hosts behind NAT goes direct when each names
// the other in its WeftReach, else through the relay (a host not behind
// NAT) both name with the lowest lease key; both ends decide alike. The
// relayed peer's AllowedIPs move to the relay's spec; the peer stays on
// the device without them, so a direct path is found when one opens.
func TestChooseRelays(t *testing.T) {
	ep := netip.MustParseAddrPort
	kA, kB, k1, k9 := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	const a, b, r1, r9 = "10.5.2.0-24", "10.5.3.0-24", "10.5.1.0-24", "10.5.9.0-24"
	// Hosts 1 and 9 see a and b at their NATs.
	seen := []lease.Sighting{{Lease: a, Endpoint: ep("192.168.50.12:4001")}, {Lease: b, Endpoint: ep("192.168.50.13:4002")}}
	leaseOf := func(key, ip string, k keys.Key, s []lease.Sighting, reach []string) lease.Lease {
		data, _ := json.Marshal(BackendData{PublicKey: k.String(), Port: 51820})
		subnet := netip.MustParsePrefix(key[:len(key)-3] + "/24")
		return lease.Lease{Subnet: subnet, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "wireguard", BackendData: data}.WithSightings(s, reach)}
	}
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	view := func(self string, reachA, reachB []string) (discovery, []PeerSpec) {
		all := []lease.Lease{leaseOf(a, "172.31.2.2", kA, nil, reachA), leaseOf(b, "172.31.3.2", kB, nil, reachB),
			leaseOf(r1, "192.168.50.11", k1, seen, nil), leaseOf(r9, "192.168.50.19", k9, seen, nil)}
		var me lease.Lease
		var others []lease.Lease
		for _, l := range all {
			if l.Key() == self {
				me = l
			} else {
				others = append(others, l)
			}
		}
		d := mesh.Compute(me, others, cfg)
		found := discover(d)
		specs, problems := candidates(d, keys.Key{1}, Options{}, found)
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		return found, specs
	}
	for _, tt := range []struct {
		name           string
		reachA, reachB []string
		relay          string
	}{
		{"both reach both relays: the lowest", []string{r1, r9}, []string{r1, r9}, r1},
		{"only one relay in common", []string{r1, r9}, []string{r9}, r9},
		{"each names the other: direct", []string{b, r1}, []string{a, r1}, ""},
		{"only one names the other: relayed", []string{b, r1}, []string{r1}, r1},
		{"no relay in common: direct, tried", []string{r1}, []string{r9}, ""},
	} {
		foundA, specsA := view(a, tt.reachA, tt.reachB)
		foundB, _ := view(b, tt.reachA, tt.reachB)
		if foundA.relays[b] != tt.relay || foundB.relays[a] != tt.relay {
			t.Errorf("%s: a relays b through %q, b relays a through %q, want %q", tt.name, foundA.relays[b], foundB.relays[a], tt.relay)
		}
		for _, s := range specsA {
			switch {
			case s.Lease == b && tt.relay != "" && (len(s.AllowedIPs) != 0 || s.Relay != tt.relay || s.Endpoint != ep("192.168.50.13:4002")):
				t.Errorf("%s: b's spec %+v, want no AllowedIPs, relayed by %s, kept at its NAT's endpoint", tt.name, s, tt.relay)
			case s.Lease == tt.relay && len(s.AllowedIPs) != 2:
				t.Errorf("%s: the relay's AllowedIPs %v, want its own subnet and b's", tt.name, s.AllowedIPs)
			case s.Lease == b && tt.relay == "" && len(s.AllowedIPs) != 1:
				t.Errorf("%s: b's AllowedIPs %v, want its subnet (direct)", tt.name, s.AllowedIPs)
			}
		}
	}
}

// TestEagerBound: sightings make at most maxEager peers eager (configured
// at once, never idled, kept open with keepalives), the first by lease
// key; the others are still sent to where they are seen, but wait for
// traffic, and are counted. Sightings are anyone's to write, so without
// the bound one lease could hold an on-demand host fully configured.
func TestEagerBound(t *testing.T) {
	const extra = 10
	n := maxEager + extra
	var peers []mesh.Peer
	var seen []lease.Sighting
	for i := range n {
		key := fmt.Sprintf("10.%d.%d.0-24", 6+i/256, i%256)
		p := wgPeer(key[:len(key)-3]+"/24", fmt.Sprintf("198.51.%d.%d", i/256, 1+i%250), data(mustKey(t), 51820))
		peers = append(peers, p)
		seen = append(seen, lease.Sighting{Lease: p.Key, Endpoint: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.9"), uint16(1000+i))})
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1")}.WithSightings(seen, nil)}
	d := mesh.Desired{Network: netip.MustParsePrefix("10.0.0.0/8"), Self: self, Peers: peers}
	found := discover(d)
	if len(found.eager) != maxEager || found.capped != extra {
		t.Fatalf("eager %d, capped %d; want %d and %d", len(found.eager), found.capped, maxEager, extra)
	}
	specs, problems := candidates(d, keys.Key{1}, Options{}, found)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	eager, lazy := 0, 0
	for i, s := range specs {
		if s.Endpoint.Addr() != netip.MustParseAddr("203.0.113.9") {
			t.Errorf("%s at %s, want where it is seen", s.Lease, s.Endpoint)
		}
		switch {
		case s.NAT && s.Keepalive == pathKeepalive && i < maxEager:
			eager++
		case !s.NAT && s.Keepalive == 0 && i >= maxEager:
			lazy++
		default:
			t.Errorf("peer %d (%s): NAT %v keepalive %v; want the first %d eager, the rest not", i, s.Lease, s.NAT, s.Keepalive, maxEager)
		}
	}
	if eager != maxEager || lazy != extra {
		t.Errorf("%d eager and %d not, want %d and %d", eager, lazy, maxEager, extra)
	}
}
