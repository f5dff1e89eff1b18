package wireguard

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

func mustKey(t *testing.T) keys.Key {
	t.Helper()
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

func wgPeer(subnet, ip string, data string) mesh.Peer {
	p := netip.MustParsePrefix(subnet)
	return mesh.Peer{Key: strings.ReplaceAll(p.String(), "/", "-"), Subnet: p, PublicIP: netip.MustParseAddr(ip),
		BackendType: "wireguard", BackendData: json.RawMessage(data)}
}

func data(k keys.Key, port int) string { return string(EncodeBackendData(k, port)) }

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions(nil)
	if err != nil || o.ListenPort != 51820 || o.ListenPortV6 != 51821 || o.Mode != ModeSeparate || o.Implementation != ImplAuto || o.PSK != nil || o.PersistentKeepalive != 0 {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	psk := mustKey(t)
	o, err = ParseOptions(json.RawMessage(fmt.Sprintf(`{"Type":"wireguard","ListenPort":51999,"PSK":%q,"PersistentKeepaliveInterval":25,"MTU":1400,"Implementation":"userspace"}`, psk)))
	if err != nil || o.ListenPort != 51999 || *o.PSK != psk || o.PersistentKeepalive != 25*time.Second || o.MTU != 1400 || o.Implementation != ImplUserspace {
		t.Fatalf("explicit: %+v %v", o, err)
	}
	for raw, want := range map[string]string{
		`{"PSK":"not-base64!"}`:              `key "Backend.PSK": not base64`,
		`{"PSK":"AAAA"}`:                     `key "Backend.PSK": decodes to 3 bytes`,
		`{"ListenPort":0}`:                   `key "Backend.ListenPort": 0 is not a UDP port`,
		`{"ListenPort":70000}`:               `key "Backend.ListenPort": 70000`,
		`{"Implementation":"magic"}`:         `key "Backend.Implementation": "magic" is not one of auto, kernel, userspace`,
		`{"MTU":100}`:                        `key "Backend.MTU": 100`,
		`{"PersistentKeepaliveInterval":-1}`: `key "Backend.PersistentKeepaliveInterval"`,
		`{"ListenPort":"51820"}`:             `wireguard Backend options`,
		`{"Mode":"both"}`:                    `key "Backend.Mode": "both" is not one of separate, auto, ipv4, ipv6`,
		`{"ListenPortV6":0}`:                 `key "Backend.ListenPortV6": 0 is not a UDP port`,
	} {
		if _, err := ParseOptions(json.RawMessage(raw)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOptions(%s) = %v, want %q", raw, err, want)
		}
	}
}

func TestBackendDataAsFlannel(t *testing.T) {
	var k keys.Key
	k[0] = 1
	if got := data(k, 51820); got != `{"PublicKey":"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":51820}` {
		t.Fatalf("BackendData = %s", got)
	}
}

func TestPlanSkipsBadPeers(t *testing.T) {
	self, a, b, dup := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	d := mesh.Desired{Peers: []mesh.Peer{
		wgPeer("10.5.2.0/24", "192.168.50.2", data(a, 51820)),
		wgPeer("10.5.3.0/24", "192.168.50.3", data(b, 51821)),
		wgPeer("10.5.4.0/24", "192.168.50.4", `{"PublicKey":"c2hvcnQ=","Port":51820}`),
		wgPeer("10.5.5.0/24", "192.168.50.5", `not json`),
		wgPeer("10.5.6.0/24", "192.168.50.6", data(self, 51820)),
		wgPeer("10.5.7.0/24", "192.168.50.7", data(dup, 51820)),
		wgPeer("10.5.8.0/24", "192.168.50.8", data(dup, 51820)),
		wgPeer("10.5.9.0/24", "192.168.50.9", fmt.Sprintf(`{"PublicKey":%q,"Port":0}`, mustKey(t))),
	}}
	specs, problems := Plan(d, self, Options{ListenPort: 51820, PersistentKeepalive: 25 * time.Second})
	var got []string
	for _, s := range specs {
		got = append(got, fmt.Sprintf("%s %s %v", s.Lease, s.Endpoint, s.AllowedIPs))
	}
	want := []string{"10.5.2.0-24 192.168.50.2:51820 [10.5.2.0/24]", "10.5.3.0-24 192.168.50.3:51821 [10.5.3.0/24]"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("peers:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	text := fmt.Sprint(problems)
	for _, frag := range []string{"peer 10.5.4.0-24: PublicKey", "peer 10.5.5.0-24: BackendData", "peer 10.5.6.0-24: publishes this host's own public key",
		"peer 10.5.7.0-24: PublicKey is published by 2 leases (10.5.7.0-24, 10.5.8.0-24)", "peer 10.5.8.0-24: PublicKey is published by 2 leases",
		"peer 10.5.9.0-24: Port 0"} {
		if !strings.Contains(text, frag) {
			t.Errorf("problems lack %q:\n%s", frag, text)
		}
	}
	if specs[0].Keepalive != 25*time.Second {
		t.Error("keepalive not carried")
	}
}

func TestPeerChanges(t *testing.T) {
	a, b, c, stranger := mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	spec := func(k keys.Key, ep, subnet string) PeerSpec {
		return PeerSpec{PublicKey: k, Endpoint: netip.MustParseAddrPort(ep), AllowedIPs: []netip.Prefix{netip.MustParsePrefix(subnet)}}
	}
	state := func(s PeerSpec) PeerState {
		return PeerState{PublicKey: s.PublicKey, Endpoint: s.Endpoint, AllowedIPs: s.AllowedIPs}
	}
	pa, pb, pc := spec(a, "192.168.50.2:51820", "10.5.2.0/24"), spec(b, "192.168.50.3:51820", "10.5.3.0/24"), spec(c, "192.168.50.4:51820", "10.5.4.0/24")
	render := func(ch []Change) string {
		var out []string
		for _, x := range ch {
			name := map[keys.Key]string{a: "a", b: "b", c: "c", stranger: "stranger"}[x.PublicKey]
			if x.Remove {
				out = append(out, "remove "+name)
			} else {
				out = append(out, "set "+name)
			}
		}
		return strings.Join(out, ",")
	}
	moved := pb
	moved.Endpoint = netip.MustParseAddrPort("192.168.50.33:51820")
	tests := []struct {
		name string
		have []PeerState
		want []PeerSpec
		out  string
	}{
		{"nothing to do", []PeerState{state(pa), state(pb)}, []PeerSpec{pa, pb}, ""},
		{"added", []PeerState{state(pa)}, []PeerSpec{pa, pb}, "set b"},
		{"removed", []PeerState{state(pa), state(pb)}, []PeerSpec{pa}, "remove b"},
		{"endpoint changed", []PeerState{state(pa), state(pb)}, []PeerSpec{pa, moved}, "set b"},
		{"key changed", []PeerState{state(pa), state(pb)}, []PeerSpec{pa, {PublicKey: c, Endpoint: pb.Endpoint, AllowedIPs: pb.AllowedIPs}}, "set c,remove b"},
		{"stranger removed", []PeerState{state(pa), {PublicKey: stranger}}, []PeerSpec{pa}, "remove stranger"},
		{"keepalive changed", []PeerState{state(pc)}, []PeerSpec{{PublicKey: c, Endpoint: pc.Endpoint, AllowedIPs: pc.AllowedIPs, Keepalive: time.Second}}, "set c"},
	}
	for _, tt := range tests {
		if got := render(PeerChanges(tt.have, tt.want)); got != tt.out {
			t.Errorf("%s: got %q, want %q", tt.name, got, tt.out)
		}
	}
}

// TestDeltaStandsAlone: a delta is applied on its own unless a key that
// two leases publish is involved, either way round.
func TestDeltaStandsAlone(t *testing.T) {
	a, b, dup := mustKey(t), mustKey(t), mustKey(t)
	spec := func(k keys.Key, lease string) PeerSpec { return PeerSpec{Lease: lease, PublicKey: k} }
	holders := map[keys.Key][]string{a: {"10.5.1.0-24"}, dup: {"10.5.2.0-24", "10.5.3.0-24"}}
	cases := []struct {
		name          string
		before, after []PeerSpec
		want          bool
	}{
		{"a new peer", nil, []PeerSpec{spec(b, "10.5.4.0-24")}, true},
		{"a peer moves", []PeerSpec{spec(a, "10.5.1.0-24")}, []PeerSpec{spec(a, "10.5.1.0-24")}, true},
		{"a peer leaves", []PeerSpec{spec(a, "10.5.1.0-24")}, nil, true},
		{"a duplicate leaves: its twin may become a peer", []PeerSpec{spec(dup, "10.5.2.0-24")}, nil, false},
		{"a key another lease publishes arrives", nil, []PeerSpec{spec(a, "10.5.9.0-24")}, false},
		{"one key arrives twice", nil, []PeerSpec{spec(b, "10.5.4.0-24"), spec(b, "10.5.5.0-24")}, false},
	}
	for _, c := range cases {
		if got := deltaStandsAlone(c.before, c.after, holders); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPeersToKick: new peers get a handshake now; all of them when this
// host's own key changed; removed and updated peers never.
func TestPeersToKick(t *testing.T) {
	old, moved, fresh := mustKey(t), mustKey(t), mustKey(t)
	have := []PeerState{{PublicKey: old}, {PublicKey: moved}}
	ep := netip.MustParseAddrPort("192.168.50.9:51820")
	outside := mustKey(t)
	want := []PeerSpec{{PublicKey: moved, Endpoint: ep}, {PublicKey: fresh, Endpoint: ep}, {PublicKey: outside}}
	changes := []Change{{Remove: true, PublicKey: old}, {PublicKey: moved, Spec: want[0]}, {PublicKey: fresh, Spec: want[1]}, {PublicKey: outside, Spec: want[2]}}
	if got := peersToKick(have, want, changes, false); len(got) != 1 || got[0].PublicKey != fresh {
		t.Errorf("kicked %v, want only the new peer", got)
	}
	if got := peersToKick(have, want, changes, true); len(got) != 2 {
		t.Errorf("own key changed: kicked %d peers, want the 2 with an endpoint", len(got))
	}
}

// TestUnusableWireGuardData: an all-zero key and port 0 are skipped.
func TestUnusableWireGuardData(t *testing.T) {
	self := mustKey(t)
	d := mesh.Desired{Peers: []mesh.Peer{
		wgPeer("10.5.2.0/24", "192.168.50.2", `{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":51820}`),
		wgPeer("10.5.3.0/24", "192.168.50.3", data(mustKey(t), 0)),
	}}
	specs, problems := Plan(d, self, Options{ListenPort: 51820})
	if len(specs) != 0 || len(problems) != 2 || !strings.Contains(problems[0].Error(), "all zeros") || !strings.Contains(problems[1].Error(), "Port 0") {
		t.Errorf("specs %v, problems %v", specs, problems)
	}
}

// TestPlanDualStackModes: on a dual-stack network, Mode "separate" leaves
// the IPv6 half to the second device; the one-device Modes add each peer's
// IPv6 subnet and reach it at the address family the Mode picks, "auto" as
// flannel's selectMode (public IPv4 first, then public IPv6 at both ends,
// else IPv4).
func TestPlanDualStackModes(t *testing.T) {
	self, k := mustKey(t), mustKey(t)
	peer := func(ip4, ip6 string) mesh.Peer {
		p := wgPeer("10.5.2.0/24", ip4, data(k, 51820))
		p = p.WithIPv6(netip.MustParsePrefix("fc00:5:0:2::/64"), netip.MustParseAddr(ip6), json.RawMessage(data(k, 51821)))
		return p
	}
	private, public := peer("192.168.50.2", "fd50::2"), peer("203.0.113.2", "2001:db8::2")
	v6public := peer("192.168.50.2", "2001:db8::2")
	for _, tt := range []struct {
		mode          string
		local6        string
		p             mesh.Peer
		endpoint, ips string
	}{
		{ModeSeparate, "fd50::1", private, "192.168.50.2:51820", "[10.5.2.0/24]"},
		{ModeIPv4, "fd50::1", private, "192.168.50.2:51820", "[10.5.2.0/24 fc00:5:0:2::/64]"},
		{ModeIPv6, "fd50::1", private, "[fd50::2]:51821", "[10.5.2.0/24 fc00:5:0:2::/64]"},
		{ModeAuto, "fd50::1", private, "192.168.50.2:51820", "[10.5.2.0/24 fc00:5:0:2::/64]"},
		{ModeAuto, "2001:db8::1", public, "203.0.113.2:51820", "[10.5.2.0/24 fc00:5:0:2::/64]"},
		{ModeAuto, "2001:db8::1", v6public, "[2001:db8::2]:51821", "[10.5.2.0/24 fc00:5:0:2::/64]"},
		{ModeAuto, "fd50::1", v6public, "192.168.50.2:51820", "[10.5.2.0/24 fc00:5:0:2::/64]"},
	} {
		opts := Options{ListenPort: 51820, Mode: tt.mode, localIPv4: netip.MustParseAddr("192.168.50.1"), localIPv6: netip.MustParseAddr(tt.local6)}
		d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), IPv6Network: netip.MustParsePrefix("fc00:5::/48"), Peers: []mesh.Peer{tt.p}}
		specs, problems := Plan(d, self, opts)
		if len(problems) != 0 || len(specs) != 1 {
			t.Fatalf("%s: %v %v", tt.mode, specs, problems)
		}
		if got := specs[0].Endpoint.String(); got != tt.endpoint || fmt.Sprint(specs[0].AllowedIPs) != tt.ips {
			t.Errorf("Mode %s, local %s, peer %s/%s: endpoint %s allowed %v, want %s %s", tt.mode, tt.local6, tt.p.PublicIP, tt.p.PublicIPv6(),
				got, specs[0].AllowedIPs, tt.endpoint, tt.ips)
		}
	}
}

// TestKeepRoamed: an endpoint WireGuard roamed to (a peer behind NAT) is
// kept while the lease is unchanged and handshakes are recent; a lease
// that moves is followed; a roamed endpoint without a handshake for
// RejectAfter goes back to the lease's.
func TestKeepRoamed(t *testing.T) {
	k := mustKey(t)
	now := time.Now()
	lease := netip.MustParseAddrPort("192.168.50.2:51820")
	roamed := netip.MustParseAddrPort("192.168.60.1:40123")
	want := []PeerSpec{{PublicKey: k, Endpoint: lease}}
	for _, tt := range []struct {
		name      string
		last      netip.AddrPort
		handshake time.Time
		wantEP    netip.AddrPort
	}{
		{"roamed, recent handshake", lease, now.Add(-30 * time.Second), roamed},
		{"roamed, stale handshake", lease, now.Add(-RejectAfter - time.Second), lease},
		{"roamed, never a handshake", lease, time.Time{}, lease},
		{"the lease moved", netip.MustParseAddrPort("192.168.50.9:51820"), now, lease},
		{"first apply after a restart, recent handshake", netip.AddrPort{}, now.Add(-time.Second), roamed},
	} {
		last := map[keys.Key]netip.AddrPort{}
		if tt.last.IsValid() {
			last[k] = tt.last
		}
		got := KeepRoamed(want, []PeerState{{PublicKey: k, Endpoint: roamed, LastHandshake: tt.handshake}}, last, now)
		if got[0].Endpoint != tt.wantEP {
			t.Errorf("%s: endpoint %s, want %s", tt.name, got[0].Endpoint, tt.wantEP)
		}
		if changes := PeerChanges([]PeerState{{PublicKey: k, Endpoint: roamed}}, got); (len(changes) == 0) != (tt.wantEP == roamed) {
			t.Errorf("%s: changes %v", tt.name, changes)
		}
	}
	if want[0].Endpoint != lease {
		t.Error("KeepRoamed changed its input")
	}
}

// TestPlanDirectRouting: with DirectRouting, a peer on the external
// interface's networks gets a plain route and no WireGuard peer; one
// elsewhere is a WireGuard peer and gets no route.
func TestPlanDirectRouting(t *testing.T) {
	self, a, b := mustKey(t), mustKey(t), mustKey(t)
	d := mesh.Desired{Peers: []mesh.Peer{
		wgPeer("10.5.2.0/24", "192.168.50.2", data(a, 51820)),
		wgPeer("10.5.3.0/24", "192.168.60.3", data(b, 51820)),
	}}
	opts := Options{ListenPort: 51820, DirectRouting: true, localPrefixes: []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}}
	specs, problems := Plan(d, self, opts)
	if len(problems) != 0 || len(specs) != 1 || specs[0].PublicKey != b {
		t.Errorf("WireGuard peers %v %v, want only the one elsewhere", specs, problems)
	}
	if routes := DirectRoutes(d, opts); len(routes) != 1 || routes[0] != (underlay.Route{Dst: netip.MustParsePrefix("10.5.2.0/24"), Via: netip.MustParseAddr("192.168.50.2"), Direct: true}) {
		t.Errorf("direct routes %v", routes)
	}
	opts.DirectRouting = false
	if specs, _ := Plan(d, self, opts); len(specs) != 2 || len(DirectRoutes(d, opts)) != 0 {
		t.Errorf("without DirectRouting: %d peers, %d routes", len(specs), len(DirectRoutes(d, opts)))
	}
}

// TestPlanOutsidePeers: an outside peer is a WireGuard peer with its
// PeersNetwork address as the only allowed IP, no endpoint unless given,
// always configured (even on demand); one with a bad key or an address
// outside PeersNetwork is skipped, naming it.
func TestPlanOutsidePeers(t *testing.T) {
	self, k := mustKey(t), mustKey(t)
	d := mesh.Desired{PeersNetwork: netip.MustParsePrefix("10.6.0.0/24"), Outside: []lease.OutsidePeer{
		{Name: "laptop", PublicKey: k.String(), Address: netip.MustParsePrefix("10.6.0.1/32"), Keepalive: 25},
		{Name: "bad", PublicKey: "short", Address: netip.MustParsePrefix("10.6.0.2/32")},
		{Name: "away", PublicKey: mustKey(t).String(), Address: netip.MustParsePrefix("10.7.0.1/32")},
	}}
	specs, problems := Plan(d, self, Options{ListenPort: 51820})
	if len(specs) != 1 || specs[0].Lease != "peers/laptop" || specs[0].Endpoint.IsValid() || !specs[0].NAT ||
		fmt.Sprint(specs[0].AllowedIPs) != "[10.6.0.1/32]" || specs[0].Keepalive != 25*time.Second {
		t.Errorf("specs %+v", specs)
	}
	if len(problems) != 2 {
		t.Errorf("problems %v, want the bad key and the address outside PeersNetwork", problems)
	}
}

// TestPlanChecksOutsideRecords: weftd checks every outside-peer record
// itself (issue 30, item 3), as weftctl does before writing one: a
// keepalive out of range, a host's public key or an address another record
// holds skips that record alone, with its reason; the host keeps its key
// and the older record its address.
func TestPlanChecksOutsideRecords(t *testing.T) {
	self, host, a, b, c := mustKey(t), mustKey(t), mustKey(t), mustKey(t), mustKey(t)
	addr := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	d := mesh.Desired{PeersNetwork: addr("10.6.0.0/24"),
		Peers: []mesh.Peer{wgPeer("10.5.1.0/24", "192.168.50.2", data(host, 51820))},
		Outside: []lease.OutsidePeer{
			{Name: "huge-keepalive", PublicKey: a.String(), Address: addr("10.6.0.1/32"), Keepalive: 70000, Created: 5},
			{Name: "negative-keepalive", PublicKey: b.String(), Address: addr("10.6.0.2/32"), Keepalive: -5, Created: 6},
			{Name: "host-key", PublicKey: host.String(), Address: addr("10.6.0.3/32"), Created: 7},
			{Name: "newer", PublicKey: c.String(), Address: addr("10.6.0.4/32"), Created: 9},
			{Name: "older", PublicKey: mustKey(t).String(), Address: addr("10.6.0.4/32"), Created: 8},
		}}
	specs, problems := Plan(d, self, Options{ListenPort: 51820})
	var got []string
	for _, s := range specs {
		got = append(got, s.Lease)
	}
	if want := "10.5.1.0-24 peers/older"; joined(got) != want {
		t.Errorf("peers %q, want %q", joined(got), want)
	}
	reasons := fmt.Sprint(problems)
	for _, want := range []string{"peers/huge-keepalive: Keepalive 70000", "peers/negative-keepalive: Keepalive -5",
		"peers/host-key: publishes the public key of host lease 10.5.1.0-24", "peers/newer: Address 10.6.0.4/32 is outside peer older's"} {
		if !strings.Contains(reasons, want) {
			t.Errorf("problems %v lack %q", problems, want)
		}
	}
	if len(problems) != 4 {
		t.Errorf("%d problems, want 4: %v", len(problems), problems)
	}
}

// TestMixedFamilies: only peers at endpoints of both families are mixed,
// and the IPv6 ones are named; a peer with no endpoint counts for neither.
func TestMixedFamilies(t *testing.T) {
	spec := func(lease, endpoint string) PeerSpec {
		s := PeerSpec{Lease: lease}
		if endpoint != "" {
			s.Endpoint = netip.MustParseAddrPort(endpoint)
		}
		return s
	}
	for _, tt := range []struct {
		name string
		want []PeerSpec
		v6   []string
	}{
		{"IPv4 only", []PeerSpec{spec("a", "192.168.1.2:51820"), spec("b", "192.168.1.3:51820")}, nil},
		{"IPv6 only", []PeerSpec{spec("a", "[fd50::2]:51820"), spec("b", "[fd50::3]:51820")}, nil},
		{"mixed", []PeerSpec{spec("a", "192.168.1.2:51820"), spec("b", "[fd50::3]:51820"), spec("c", "")}, []string{"b"}},
		{"no endpoint", []PeerSpec{spec("a", ""), spec("b", "[fd50::3]:51820")}, nil},
	} {
		if got := MixedFamilies(tt.want); !slices.Equal(got, tt.v6) {
			t.Errorf("%s: MixedFamilies = %q, want %q", tt.name, got, tt.v6)
		}
	}
}

// TestWarnMixedFamilies: a userspace device warns once when its peers come
// to mix families, again after they stopped and mixed anew; a kernel
// device never does.
func TestWarnMixedFamilies(t *testing.T) {
	mixed := []PeerSpec{{Lease: "10.5.2.0-24", Endpoint: netip.MustParseAddrPort("192.168.1.2:51820")},
		{Lease: "10.5.3.0-24", Endpoint: netip.MustParseAddrPort("[fd50::3]:51820")}}
	v4 := mixed[:1]
	for _, tt := range []struct {
		kind  string
		warns int
	}{{ImplUserspace, 2}, {ImplKernel, 0}} {
		var out strings.Builder
		b := &Backend{link: deviceLink{name: "weft-wg", dev: &wgDevice{kind: tt.kind}}, log: slog.New(slog.NewTextHandler(&out, nil))}
		for _, want := range [][]PeerSpec{v4, mixed, mixed, v4, mixed} {
			b.warnMixedFamilies(want)
		}
		if got := strings.Count(out.String(), "level=WARN"); got != tt.warns || (got > 0 && !strings.Contains(out.String(), "ipv6_endpoints=10.5.3.0-24")) {
			t.Errorf("%s device: %d warnings, want %d:\n%s", tt.kind, got, tt.warns, out.String())
		}
	}
}
