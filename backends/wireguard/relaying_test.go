package wireguard

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/wireguard/relay"
	"github.com/weftnet/weft/keys"
)

// TestRelayTable: what a relay's lease publishes is read only for the
// pair asking, within bounds: a port outside 1-65535, an entry beyond
// relay.MaxPairs, an entry asking the pair to try its direct path, or a
// relay without a usable address names no endpoint; the pair's names
// are taken in either order.
func TestRelayTable(t *testing.T) {
	at := netip.MustParseAddr("192.168.50.11")
	const a, b = "10.5.2.0-24", "10.5.3.0-24"
	ok := RelayPort{Pair: [2]string{a, b}, Port: 51830}
	var many []RelayPort
	for i := range relay.MaxPairs {
		many = append(many, RelayPort{Pair: [2]string{fmt.Sprintf("10.6.%d.0-24", i), b}, Port: 51831})
	}
	for _, tt := range []struct {
		name  string
		table relayTable
		want  netip.AddrPort
	}{
		{"the pair's port", relayTable{at: at, ports: []RelayPort{ok}}, netip.AddrPortFrom(at, 51830)},
		{"another pair's port only", relayTable{at: at, ports: []RelayPort{{Pair: [2]string{a, "10.5.4.0-24"}, Port: 51830}}}, netip.AddrPort{}},
		{"port 0", relayTable{at: at, ports: []RelayPort{{Pair: ok.Pair, Port: 0}}}, netip.AddrPort{}},
		{"port 70000", relayTable{at: at, ports: []RelayPort{{Pair: ok.Pair, Port: 70000}}}, netip.AddrPort{}},
		{"beyond MaxPairs", relayTable{at: at, ports: append(many, ok)}, netip.AddrPort{}},
		{"asked to try direct", relayTable{at: at, ports: []RelayPort{{Pair: ok.Pair, Port: 51830, TryDirect: true}}}, netip.AddrPort{}},
		{"no address", relayTable{ports: []RelayPort{ok}}, netip.AddrPort{}},
	} {
		for _, order := range [][2]string{{a, b}, {b, a}} {
			got, found := tt.table.endpoint(order[0], order[1])
			if got != tt.want || found != tt.want.IsValid() {
				t.Errorf("%s (%s asking for %s): %v %v, want %v", tt.name, order[0], order[1], got, found, tt.want)
			}
		}
	}
}

// TestTrialEndpoint: a relay asking a pair to try direct names where it
// sees each end; each end takes the other's, and nothing that is no
// unicast address with a port.
func TestTrialEndpoint(t *testing.T) {
	const a, b = "10.5.2.0-24", "10.5.3.0-24"
	aAt, bAt := netip.MustParseAddrPort("192.168.50.12:51820"), netip.MustParseAddrPort("192.168.50.13:51820")
	table := relayTable{at: netip.MustParseAddr("192.168.50.11"),
		ports: []RelayPort{{Pair: [2]string{a, b}, Port: 51830, TryDirect: true, At: []netip.AddrPort{aAt, bAt}}}}
	if ep, ok := table.trialEndpoint(a, b); !ok || ep != bAt {
		t.Errorf("a tries b at %v (%v), want %s", ep, ok, bAt)
	}
	if ep, ok := table.trialEndpoint(b, a); !ok || ep != aAt {
		t.Errorf("b tries a at %v (%v), want %s", ep, ok, aAt)
	}
	for _, bad := range []string{"0.0.0.0:51820", "127.0.0.1:51820", "192.168.50.13:0", "224.0.0.1:51820", "[::ffff:192.168.50.13]:51820"} {
		table.ports[0].At = []netip.AddrPort{aAt, netip.MustParseAddrPort(bad)}
		if ep, ok := table.trialEndpoint(a, b); ok {
			t.Errorf("a trial endpoint %s was taken as %s", bad, ep)
		}
	}
	table.ports[0].TryDirect = false
	if _, ok := table.trialEndpoint(a, b); ok {
		t.Error("a trial endpoint was taken without TryDirect")
	}
}

// TestTryDirect: a relay asks a pair to try its direct path once both
// ends are seen at the pair's port from where its own device has them
// (NATs keeping one mapping per source port), for trialFor; not again
// for the same mappings; again when a mapping changes and is kept.
func TestTryDirect(t *testing.T) {
	const a, b = "10.5.2.0-24", "10.5.3.0-24"
	pair := relay.Pair{{Lease: a}, {Lease: b}}
	ports := []RelayPort{{Pair: [2]string{a, b}, Port: 51830}}
	aAt, bAt := netip.MustParseAddrPort("192.168.50.12:51820"), netip.MustParseAddrPort("192.168.50.13:51820")
	now := time.Now()
	trying := func(trials map[[2]string]trial, at time.Time) bool {
		tr := trials[ports[0].Pair]
		return !tr.since.IsZero() && at.Sub(tr.since) < trialFor
	}
	// Random ports: the relay's port sees a at another mapping.
	trials := tryDirect(ports, map[relay.Pair][2]netip.AddrPort{pair: {netip.MustParseAddrPort("192.168.50.12:40001"), bAt}},
		map[string]netip.AddrPort{a: aAt, b: bAt}, nil, now)
	if trying(trials, now) {
		t.Error("a pair whose NAT maps each destination anew was asked to try direct")
	}
	ends := map[relay.Pair][2]netip.AddrPort{pair: {aAt, bAt}}
	seen := map[string]netip.AddrPort{a: aAt, b: bAt}
	trials = tryDirect(ports, ends, seen, trials, now)
	if !trying(trials, now) {
		t.Fatal("a pair behind port-keeping NATs was not asked to try direct")
	}
	later := now.Add(trialFor)
	trials = tryDirect(ports, ends, seen, trials, later)
	if trying(trials, later) {
		t.Error("the trial went on past trialFor, or began again for the same mappings")
	}
	moved := netip.MustParseAddrPort("192.168.50.12:51821")
	trials = tryDirect(ports, map[relay.Pair][2]netip.AddrPort{pair: {moved, bAt}}, map[string]netip.AddrPort{a: moved, b: bAt}, trials, later)
	if !trying(trials, later) {
		t.Error("a new kept mapping did not begin a new trial")
	}
	if trials = tryDirect(nil, ends, seen, trials, later); len(trials) != 0 {
		t.Errorf("a pair no longer relayed kept its trial: %v", trials)
	}
}

// TestDeadRelayLeftOut: a host behind NAT whose relayed peer sends
// nothing through the relay for liveWindow, past relayGrace, leaves the
// relay out of what it reaches (its pairs move to another) for
// relayFailHold, though its own path to the relay is live; one dead
// peer among live ones through the same relay is the peer's trouble and
// leaves the relay in.
func TestDeadRelayLeftOut(t *testing.T) {
	kRelay, kB, kC := mustKey(t), mustKey(t), mustKey(t)
	const relayLease, bLease, cLease = "10.5.1.0-24", "10.5.3.0-24", "10.5.4.0-24"
	holders := map[keys.Key][]string{kRelay: {relayLease}, kB: {bLease}, kC: {cLease}}
	want := []PeerSpec{{Lease: relayLease}, {Lease: bLease, NAT: true, Relay: relayLease}, {Lease: cLease, NAT: true, Relay: relayLease}}
	start := time.Now()
	look := func(s *discoveryState, after time.Duration, relayRx, bRx, cRx int64) []string {
		now := start.Add(after)
		peer := func(k keys.Key, rx int64) wgtypes.Peer {
			return wgtypes.Peer{PublicKey: wgtypes.Key(k), ReceiveBytes: rx, LastHandshakeTime: now.Add(-time.Second)}
		}
		dev := &wgtypes.Device{Peers: []wgtypes.Peer{peer(kRelay, relayRx), peer(kB, bRx), peer(kC, cRx)}}
		return s.observe(dev, want, holders, now).Reach
	}
	s := newDiscoveryState()
	s.now.self = netip.MustParseAddrPort("198.51.100.1:51820") // behind NAT
	if got := look(&s, 0, 100, 100, 100); len(got) != 0 {
		t.Fatalf("baseline: reach %v", got)
	}
	// The relay's own path stays live; nothing comes from b or c
	// through it.
	var got []string
	for i := 1; i <= 6; i++ {
		got = look(&s, time.Duration(i)*2*time.Second, 100+int64(i)*100, 100, 100)
	}
	if len(got) != 0 {
		t.Errorf("nothing came through the relay for 12 s: reach %v, want the relay left out", got)
	}
	// The pairs moved off the relay (no other: direct); the relay comes
	// back once the hold is over.
	want = []PeerSpec{{Lease: relayLease}, {Lease: bLease, NAT: true}, {Lease: cLease, NAT: true}}
	if got = look(&s, 14*time.Second, 1500, 100, 100); len(got) != 0 {
		t.Errorf("within relayFailHold: reach %v, want the relay still left out", got)
	}
	if got = look(&s, 12*time.Second+relayFailHold, 2000, 100, 100); len(got) != 1 {
		t.Errorf("after relayFailHold: reach %v, want the relay back", got)
	}

	// c's packets come through the relay; b sends nothing: the relay
	// stays in.
	want = []PeerSpec{{Lease: relayLease}, {Lease: bLease, NAT: true, Relay: relayLease}, {Lease: cLease, NAT: true, Relay: relayLease}}
	s = newDiscoveryState()
	s.now.self = netip.MustParseAddrPort("198.51.100.1:51820")
	for i := 0; i <= 6; i++ {
		got = look(&s, time.Duration(i)*2*time.Second, 100+int64(i)*100, 100, 100+int64(i)*100)
	}
	if len(got) != 1 || got[0] != relayLease {
		t.Errorf("c's packets come through the relay: reach %v, want the relay", got)
	}
}

// TestFreshThroughRelay: a peer that moves to a relay's port is removed
// and set again in the same write (its session goes, so its next packet
// is a handshake the relay's forwarder places) and kicked; a peer that
// stays at its relay, or moves from a relay to a direct path, is only
// updated.
func TestFreshThroughRelay(t *testing.T) {
	k1, k2, k3 := mustKey(t), mustKey(t), mustKey(t)
	direct := netip.MustParseAddrPort("192.168.50.13:51820")
	relayAt := netip.MustParseAddrPort("192.168.50.11:51830")
	have := []PeerState{{PublicKey: k1, Endpoint: direct}, {PublicKey: k2, Endpoint: relayAt}, {PublicKey: k3, Endpoint: relayAt}}
	changes := []Change{
		{PublicKey: k1, Spec: PeerSpec{PublicKey: k1, Endpoint: relayAt, Relay: "r"}},
		{PublicKey: k2, Spec: PeerSpec{PublicKey: k2, Endpoint: relayAt, Relay: "r", Keepalive: time.Second}},
		{PublicKey: k3, Spec: PeerSpec{PublicKey: k3, Endpoint: direct}},
	}
	out, fresh := freshThroughRelay(have, changes)
	if len(out) != 4 || !out[0].Remove || out[0].PublicKey != k1 || out[1].Remove || out[1].PublicKey != k1 ||
		out[2].Remove || out[3].Remove {
		t.Errorf("changes %+v: want k1 removed then set, k2 and k3 only set", out)
	}
	if len(fresh) != 1 || fresh[0].PublicKey != k1 {
		t.Errorf("kicked %+v, want k1", fresh)
	}
}
