package wireguard

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/wireguard/relay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestDiscovery: from the hosts' sightings a host learns where each peer
// is seen (the most seen endpoint), and where it is seen itself (then it
// is behind NAT and keeps every path open); a sighting inside the overlay
// or of a host by itself counts for nothing. A peer seen elsewhere whose
// own lease says it is behind NAT is sent to there, with a keepalive,
// unless it is on this host's own network (every 2 s, even when the config
// asks for a longer keepalive); a public host is not moved by
// what others say they see of it, and nobody is eager for a sighting.
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
		// Host 3 says in its own lease that it is behind NAT.
		data, _ := json.Marshal(BackendData{PublicKey: k.Public().String(), Port: 51820, NAT: key == "10.5.3.0-24"})
		return mesh.Peer{Key: key, Subnet: netip.MustParsePrefix(key[:len(key)-3] + "/24"), PublicIP: netip.MustParseAddr(ip), BackendData: data}.WithSightings(s, nil)
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("172.31.2.2")}}
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self, Peers: []mesh.Peer{
		// host 1, public: sees hosts 2 and 3 at their routers.
		peer("10.5.1.0-24", "192.168.50.11", k2, seen("10.5.2.0-24", "192.168.50.12:51820", "10.5.3.0-24", "192.168.50.13:51820", "10.5.4.0-24", "10.5.9.9:51820")),
		// host 3, behind NAT: sees itself (ignored) and host 2 elsewhere.
		peer("10.5.3.0-24", "172.31.3.2", k3, seen("10.5.3.0-24", "203.0.113.3:1", "10.5.2.0-24", "192.168.50.99:4000")),
		// host 4, on this host's own network; it also sights host 1, a
		// public host whose lease says nothing of NAT, elsewhere (forged).
		peer("10.5.4.0-24", "172.31.2.7", k4, seen("10.5.3.0-24", "192.168.50.13:51820", "10.5.1.0-24", "203.0.113.66:51820")),
	}}
	found := discover(d, nil)
	if found.self != ep("192.168.50.12:51820") {
		t.Errorf("self seen at %v, want 192.168.50.12:51820 (a tie goes to the lowest)", found.self)
	}
	if found.peers["10.5.3.0-24"] != ep("192.168.50.13:51820") || len(found.peers) != 2 {
		t.Errorf("peers seen at %v, want host 3 at 192.168.50.13:51820 (host 4's sighting of it is inside the Network) "+
			"and host 1 where host 4 says", found.peers)
	}
	opts := Options{localPrefixes: []netip.Prefix{netip.MustParsePrefix("172.31.2.0/24")}}
	specs, problems := candidates(d, mustKey(t).Public(), opts, found)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	for _, s := range specs {
		want := s.Advertised // host 1 not moved: its lease does not say it is behind NAT
		if s.Lease == "10.5.3.0-24" {
			want = ep("192.168.50.13:51820")
		}
		if s.Endpoint != want || s.Keepalive != pathKeepalive || s.NAT != (s.Lease == "10.5.3.0-24") {
			t.Errorf("%s: endpoint %v keepalive %v NAT %v, want %v and %v (this host is behind NAT), NAT for host 3 alone",
				s.Lease, s.Endpoint, s.Keepalive, s.NAT, want, pathKeepalive)
		}
	}
	// A longer keepalive from the config does not slow the liveness a NAT
	// needs: an idle direct path would look dead between keepalives.
	opts.PersistentKeepalive = 25 * time.Second
	long, _ := candidates(d, mustKey(t).Public(), opts, found)
	for _, s := range long {
		if s.Keepalive != pathKeepalive {
			t.Errorf("%s: keepalive %v with the config's 25 s, want %v behind NAT", s.Lease, s.Keepalive, pathKeepalive)
		}
	}
	// A public host (nobody sees it elsewhere) leads on the path to host 3
	// (behind NAT): its keepalives come more often than host 3's.
	public := found
	public.self = netip.AddrPort{}
	for _, s := range specsOf(candidates(d, mustKey(t).Public(), Options{}, public)) {
		if want := map[bool]time.Duration{true: leadKeepalive, false: 0}[s.Lease == "10.5.3.0-24"]; s.Keepalive != want {
			t.Errorf("a public host's keepalive to %s: %v, want %v", s.Lease, s.Keepalive, want)
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
// NAT) both name with the lowest lease key; both ends and the relays
// decide alike. The relayed peer keeps its AllowedIPs and is reached at
// the port its relay publishes for the pair; the relay's spec keeps only
// its own subnet.
func TestChooseRelays(t *testing.T) {
	ep := netip.MustParseAddrPort
	kA, kB, k1, k9 := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	const a, b, r1, r9 = "10.5.2.0-24", "10.5.3.0-24", "10.5.1.0-24", "10.5.9.0-24"
	// Hosts 1 and 9 see a and b at their NATs.
	seen := []lease.Sighting{{Lease: a, Endpoint: ep("192.168.50.12:4001")}, {Lease: b, Endpoint: ep("192.168.50.13:4002")}}
	// a and b say in their own leases that they are behind NAT (they
	// learnt it from hosts 1 and 9's sightings of them).
	leaseOf := func(key, ip string, k keys.Key, s []lease.Sighting, reach []string) lease.Lease {
		// Both relays publish a port for the pair (each forwards for
		// it only once it works out that the pair chose it).
		relayPort := map[string]int{r1: 51830, r9: 51831}[key]
		var ports []RelayPort
		if relayPort != 0 {
			ports = []RelayPort{{Pair: [2]string{a, b}, Port: relayPort}}
		}
		data, _ := json.Marshal(BackendData{PublicKey: k.String(), Port: 51820, NAT: key == a || key == b, Relay: ports})
		subnet := netip.MustParsePrefix(key[:len(key)-3] + "/24")
		return lease.Lease{Subnet: subnet, Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "wireguard", BackendData: data}.WithSightings(s, reach)}
	}
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
	if err != nil {
		t.Fatal(err)
	}
	view := func(self string, reachA, reachB []string) (discovery, []PeerSpec, []relay.Pair) {
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
		found := discover(d, nil)
		specs, problems := candidates(d, keys.Key{1}, Options{}, found)
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		return found, specs, relayedPairs(d, specs)
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
		foundA, specsA, _ := view(a, tt.reachA, tt.reachB)
		foundB, _, _ := view(b, tt.reachA, tt.reachB)
		if foundA.relays[b] != tt.relay || foundB.relays[a] != tt.relay {
			t.Errorf("%s: a relays b through %q, b relays a through %q, want %q", tt.name, foundA.relays[b], foundB.relays[a], tt.relay)
		}
		// The relays work out the same from their side.
		for _, r := range []string{r1, r9} {
			_, _, pairs := view(r, tt.reachA, tt.reachB)
			if relays := len(pairs) == 1 && pairs[0][0].Lease == a && pairs[0][1].Lease == b; relays != (r == tt.relay) {
				t.Errorf("%s: %s relays %v, want the pair only if it is %q", tt.name, r, pairs, tt.relay)
			}
		}
		relayAt := map[string]netip.AddrPort{r1: ep("192.168.50.11:51830"), r9: ep("192.168.50.19:51831")}[tt.relay]
		for _, s := range specsA {
			switch {
			case s.Lease == b && tt.relay != "" && (len(s.AllowedIPs) != 1 || s.Relay != tt.relay || s.Endpoint != relayAt):
				t.Errorf("%s: b's spec %+v, want its own subnet, relayed by %s at %s", tt.name, s, tt.relay, relayAt)
			case s.Lease == b && tt.relay == "" && (len(s.AllowedIPs) != 1 || s.Endpoint != ep("192.168.50.13:4002")):
				t.Errorf("%s: b's spec %+v, want its subnet at its NAT's endpoint (direct)", tt.name, s)
			case (s.Lease == r1 || s.Lease == r9) && len(s.AllowedIPs) != 1:
				t.Errorf("%s: relay %s's AllowedIPs %v, want its own subnet only (it never holds the pair's traffic)", tt.name, s.Lease, s.AllowedIPs)
			}
		}
	}
}

// TestEagerBound: at most maxEager peers whose leases say they are
// behind NAT are eager (configured at once, never idled, kept open with
// keepalives), the first in the plan's order; the others are configured
// for traffic only, and counted. A lease can say so of its own host, so
// without the bound forged leases could hold an on-demand host fully
// configured.
func TestEagerBound(t *testing.T) {
	const extra = 10
	n := maxEager + extra
	var peers []mesh.Peer
	for i := range n {
		key := fmt.Sprintf("10.%d.%d.0-24", 6+i/256, i%256)
		peers = append(peers, wgPeer(key[:len(key)-3]+"/24", fmt.Sprintf("198.51.%d.%d", i/256, 1+i%250),
			string(encodeBackendData(mustKey(t), 51820, true, nil))))
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1")}}
	d := mesh.Desired{Network: netip.MustParsePrefix("10.0.0.0/8"), Self: self, Peers: peers}
	own, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	p := planWhole(d, wholeInput{key: own, current: &wgtypes.Device{}, now: time.Now()})
	if p.notEager != extra || len(p.problems) > 0 {
		t.Fatalf("%d not eager (%v), want %d", p.notEager, p.problems, extra)
	}
	for i, s := range p.peers {
		if eager := i < maxEager; s.NAT != eager || (s.Keepalive == leadKeepalive) != eager { // a public host leads
			t.Errorf("peer %d (%s): NAT %v keepalive %v; want the first %d eager with keepalives, the rest not", i, s.Lease, s.NAT,
				s.Keepalive, maxEager)
		}
	}
}

// TestSightingAtNamedEndpoint: a host seen where its own lease says it is
// (a host whose address just changed is seen at its new address, which
// its lease names a moment later or already) is not behind NAT, and a
// peer seen there is not moved: only an endpoint the lease does not name
// counts.
func TestSightingAtNamedEndpoint(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	data := func(k keys.Key) json.RawMessage {
		b, _ := json.Marshal(BackendData{PublicKey: k.String(), Port: 51820})
		return b
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.61"), BackendData: data(k1)}}
	sightings := func(self, peer string) []lease.Sighting {
		return []lease.Sighting{{Lease: "10.5.1.0-24", Endpoint: netip.MustParseAddrPort(self)},
			{Lease: "10.5.3.0-24", Endpoint: netip.MustParseAddrPort(peer)}}
	}
	peers := func(seen []lease.Sighting) []mesh.Peer {
		return []mesh.Peer{
			mesh.Peer{Key: "10.5.2.0-24", Subnet: netip.MustParsePrefix("10.5.2.0/24"), PublicIP: netip.MustParseAddr("192.168.50.12"),
				BackendData: data(k2)}.WithSightings(seen, nil),
			{Key: "10.5.3.0-24", Subnet: netip.MustParsePrefix("10.5.3.0/24"), PublicIP: netip.MustParseAddr("192.168.50.13"),
				BackendData: data(mustKey(t))},
		}
	}
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self,
		Peers: peers(sightings("192.168.50.61:51820", "192.168.50.13:51820"))}
	if found := discover(d, nil); found.self.IsValid() || len(found.peers) != 0 {
		t.Errorf("seen where the leases say: self %v, peers %v; want nothing", found.self, found.peers)
	}
	d.Peers = peers(sightings("192.168.50.61:40000", "192.168.50.13:40001"))
	if found := discover(d, nil); !found.self.IsValid() || len(found.peers) != 1 {
		t.Errorf("seen at other ports: self %v, peers %v; want both seen", found.self, found.peers)
	}
}

// specsOf is the specs of a candidates call (its problems dropped).
func specsOf(specs []PeerSpec, _ []error) []PeerSpec { return specs }
