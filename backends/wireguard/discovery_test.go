package wireguard

import (
	"encoding/json"
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
		return mesh.Peer{Key: key, Subnet: netip.MustParsePrefix(key[:len(key)-3] + "/24"), PublicIP: netip.MustParseAddr(ip), BackendData: data, Seen: s}
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
	opts := Options{discovered: found, localPrefixes: []netip.Prefix{netip.MustParsePrefix("172.31.2.0/24")}}
	specs, problems := candidates(d, mustKey(t).Public(), opts)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	for _, s := range specs {
		want := s.Advertised
		if s.Lease == "10.5.3.0-24" {
			want = ep("192.168.50.13:51820")
		}
		if s.Endpoint != want || s.Keepalive != natKeepalive {
			t.Errorf("%s: endpoint %v keepalive %v, want %v and %v (this host is behind NAT)", s.Lease, s.Endpoint, s.Keepalive, want, natKeepalive)
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
