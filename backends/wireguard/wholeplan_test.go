package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// renderPlan prints a whole plan as text, one fact a line, for the table
// tests: the peers wanted, what the device write sets, the handshakes
// started, the device's halves and DirectRouting's routes.
func renderPlan(p wholePlan, names map[keys.Key]string) string {
	var b strings.Builder
	for _, s := range p.peers {
		fmt.Fprintf(&b, "peer %s %s at %s allowed %v", s.Lease, names[s.PublicKey], s.Endpoint, s.AllowedIPs)
		if s.NAT {
			b.WriteString(" eager")
		}
		if s.Keepalive > 0 {
			fmt.Fprintf(&b, " keepalive %s", s.Keepalive)
		}
		if s.Relay != "" {
			fmt.Fprintf(&b, " relayed by %s", s.Relay)
		}
		b.WriteString("\n")
	}
	for _, e := range p.problems {
		fmt.Fprintf(&b, "skip %v\n", e)
	}
	if p.device.config.PrivateKey != nil {
		b.WriteString("write key\n")
	}
	if p.device.config.ListenPort != nil {
		fmt.Fprintf(&b, "write port %d\n", *p.device.config.ListenPort)
	}
	for _, c := range p.device.config.Peers {
		if c.Remove {
			fmt.Fprintf(&b, "write remove %s\n", names[keys.Key(c.PublicKey)])
			continue
		}
		fmt.Fprintf(&b, "write peer %s\n", names[keys.Key(c.PublicKey)])
	}
	for _, s := range p.device.kick {
		fmt.Fprintf(&b, "kick %s\n", names[s.PublicKey])
	}
	if p.onDemand {
		b.WriteString("on demand\n")
	}
	for _, h := range p.halves {
		fmt.Fprintf(&b, "half %s in %s\n", h.Self, h.Network)
	}
	for _, r := range p.direct {
		fmt.Fprintf(&b, "direct %s via %s\n", r.Dst, r.Via)
	}
	if p.found.self.IsValid() {
		fmt.Fprintf(&b, "behind NAT, seen at %s\n", p.found.self)
	}
	for _, r := range p.relaying {
		fmt.Fprintf(&b, "relays %s/%s\n", r[0].Lease, r[1].Lease)
	}
	return b.String()
}

// TestPlanWhole: the whole apply's plan, from the desired state and the
// device as read, before anything is written.
func TestPlanWhole(t *testing.T) {
	own, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	k2, k3, k4 := mustKey(t), mustKey(t), mustKey(t)
	names := map[keys.Key]string{k2: "k2", k3: "k3", k4: "k4"}
	network := netip.MustParsePrefix("10.5.0.0/16")
	selfLease := lease.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1")}}
	p2 := wgPeer("10.5.2.0/24", "192.168.50.2", data(k2, 51820))
	p3 := wgPeer("10.5.3.0/24", "172.31.3.2", data(k3, 51820))
	// p3nat is host 3 once it says in its lease that it is behind NAT.
	p3nat := wgPeer("10.5.3.0/24", "172.31.3.2", string(encodeBackendData(k3, 51820, true, nil)))
	p4 := wgPeer("10.5.4.0/24", "192.168.50.4", data(k4, 51820))
	// p2relay is host 2 once it relays the pair of hosts 1 and 3.
	p2relay := wgPeer("10.5.2.0/24", "192.168.50.2", string(encodeBackendData(k2, 51820, false,
		[]RelayPort{{Pair: [2]string{"10.5.1.0-24", "10.5.3.0-24"}, Port: 51830}})))
	sighting := func(key, ep string) lease.Sighting {
		return lease.Sighting{Lease: key, Endpoint: netip.MustParseAddrPort(ep)}
	}
	empty := &wgtypes.Device{}
	holding := func(specs ...PeerSpec) *wgtypes.Device {
		d := &wgtypes.Device{PrivateKey: wgtypes.Key(own), ListenPort: 51820}
		for _, s := range specs {
			var allowed []net.IPNet
			for _, a := range s.AllowedIPs {
				allowed = append(allowed, net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())})
			}
			d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: wgtypes.Key(s.PublicKey), Endpoint: net.UDPAddrFromAddrPort(s.Endpoint),
				AllowedIPs: allowed})
		}
		return d
	}
	// live is a device with a session with k2, whose sightings of this
	// host then count.
	live := &wgtypes.Device{PrivateKey: wgtypes.Key(own), ListenPort: 51820,
		Peers: []wgtypes.Peer{{PublicKey: wgtypes.Key(k2), LastHandshakeTime: time.Now()}}}
	spec := func(k keys.Key, ep, allowed string) PeerSpec {
		return PeerSpec{PublicKey: k, Endpoint: netip.MustParseAddrPort(ep), AllowedIPs: []netip.Prefix{netip.MustParsePrefix(allowed)}}
	}
	opts := func(js string) Options {
		o, err := ParseOptions([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		o.localIPv4, o.localPrefixes = netip.MustParseAddr("192.168.50.1"), []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}
		return o
	}
	for _, tt := range []struct {
		name      string
		self      lease.Lease
		peers     []mesh.Peer
		opts      string
		userspace bool
		current   *wgtypes.Device
		want      string
	}{
		{name: "a new device gets the key, the port and every peer, each kicked",
			self: selfLease, peers: []mesh.Peer{p2, p3}, current: empty,
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
peer 10.5.3.0-24 k3 at 172.31.3.2:51820 allowed [10.5.3.0/24]
write key
write port 51820
write peer k2
write peer k3
kick k2
kick k3
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "a device that holds the peers as wanted is not written",
			self: selfLease, peers: []mesh.Peer{p2}, current: holding(spec(k2, "192.168.50.2:51820", "10.5.2.0/24")),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "a peer gone is removed, a bad lease skipped, the rest applied",
			self: selfLease, peers: []mesh.Peer{p2, wgPeer("10.5.5.0/24", "192.168.50.5", `{"PublicKey":"nope","Port":51820}`)},
			current: holding(spec(k2, "192.168.50.2:51820", "10.5.2.0/24"), spec(k4, "192.168.50.4:51820", "10.5.4.0/24")),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
skip peer 10.5.5.0-24: PublicKey "nope": ` + badKeyText(t) + `
write remove k4
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "DirectRouting reaches a peer on the external network by a plain route",
			self: selfLease, peers: []mesh.Peer{p3, p4}, opts: `{"DirectRouting":true}`, current: holding(),
			want: `peer 10.5.3.0-24 k3 at 172.31.3.2:51820 allowed [10.5.3.0/24]
write peer k3
kick k3
half 10.5.1.0/24 in 10.5.0.0/16
direct 10.5.4.0/24 via 192.168.50.4
`},
		{name: "on demand (userspace), a new device holds no peer until traffic asks",
			self: selfLease, peers: []mesh.Peer{p2, p3}, opts: `{"OnDemandPeers":"on"}`, userspace: true, current: holding(),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
peer 10.5.3.0-24 k3 at 172.31.3.2:51820 allowed [10.5.3.0/24]
on demand
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "on demand is kernel WireGuard's never",
			self: selfLease, peers: []mesh.Peer{p2}, opts: `{"OnDemandPeers":"on"}`, current: holding(),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
write peer k2
kick k2
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "behind NAT, a pair that cannot reach each other goes through the public host both reach, at the port it publishes for them",
			self: lease.Lease{Subnet: selfLease.Subnet, Attrs: selfLease.Attrs.WithSightings(nil, []string{"10.5.2.0-24"})},
			peers: []mesh.Peer{
				p2relay.WithSightings([]lease.Sighting{sighting("10.5.1.0-24", "198.51.100.1:51820"), sighting("10.5.3.0-24", "198.51.100.3:4000")}, nil),
				p3nat.WithSightings(nil, []string{"10.5.2.0-24"}),
			}, current: live,
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24] keepalive 2s
peer 10.5.3.0-24 k3 at 192.168.50.2:51830 allowed [10.5.3.0/24] eager keepalive 2s relayed by 10.5.2.0-24
write peer k2
write peer k3
kick k3
half 10.5.1.0/24 in 10.5.0.0/16
behind NAT, seen at 198.51.100.1:51820
`},
		{name: "behind NAT, a pair whose relay publishes no port for it yet stays direct",
			self: lease.Lease{Subnet: selfLease.Subnet, Attrs: selfLease.Attrs.WithSightings(nil, []string{"10.5.2.0-24"})},
			peers: []mesh.Peer{
				p2.WithSightings([]lease.Sighting{sighting("10.5.1.0-24", "198.51.100.1:51820"), sighting("10.5.3.0-24", "198.51.100.3:4000")}, nil),
				p3nat.WithSightings(nil, []string{"10.5.2.0-24"}),
			}, current: live,
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24] keepalive 2s
peer 10.5.3.0-24 k3 at 198.51.100.3:4000 allowed [10.5.3.0/24] eager keepalive 2s
write peer k2
write peer k3
kick k3
half 10.5.1.0/24 in 10.5.0.0/16
behind NAT, seen at 198.51.100.1:51820
`},
		{name: "a public host relays the pairs behind NAT that chose it, by their leases",
			self: selfLease,
			peers: []mesh.Peer{
				wgPeer("10.5.2.0/24", "172.31.2.2", string(encodeBackendData(k2, 51820, true, nil))).WithSightings(nil, []string{"10.5.1.0-24"}),
				p3nat.WithSightings(nil, []string{"10.5.1.0-24", "10.5.4.0-24"}),
				p4,
			}, current: holding(),
			want: `peer 10.5.2.0-24 k2 at 172.31.2.2:51820 allowed [10.5.2.0/24] eager keepalive 1s
peer 10.5.3.0-24 k3 at 172.31.3.2:51820 allowed [10.5.3.0/24] eager keepalive 1s
peer 10.5.4.0-24 k4 at 192.168.50.4:51820 allowed [10.5.4.0/24]
write peer k2
write peer k3
write peer k4
kick k2
kick k3
kick k4
half 10.5.1.0/24 in 10.5.0.0/16
relays 10.5.2.0-24/10.5.3.0-24
`},
		{name: "behind NAT, a pair that reaches each other goes direct",
			self: lease.Lease{Subnet: selfLease.Subnet, Attrs: selfLease.Attrs.WithSightings(nil, []string{"10.5.2.0-24", "10.5.3.0-24"})},
			peers: []mesh.Peer{
				p2.WithSightings([]lease.Sighting{sighting("10.5.1.0-24", "198.51.100.1:51820"), sighting("10.5.3.0-24", "198.51.100.3:4000")}, nil),
				p3nat.WithSightings(nil, []string{"10.5.2.0-24", "10.5.1.0-24"}),
			}, current: live,
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24] keepalive 2s
peer 10.5.3.0-24 k3 at 198.51.100.3:4000 allowed [10.5.3.0/24] eager keepalive 2s
write peer k2
write peer k3
kick k3
half 10.5.1.0/24 in 10.5.0.0/16
behind NAT, seen at 198.51.100.1:51820
`},
		{name: "a host sharing this host's address is never sent to that address, nor routed directly",
			self: selfLease, peers: []mesh.Peer{wgPeer("10.5.6.0/24", "192.168.50.1", data(k4, 51820))}, opts: `{"DirectRouting":true}`,
			current: holding(),
			want: `peer 10.5.6.0-24 k4 at invalid AddrPort allowed [10.5.6.0/24] keepalive 2s
write peer k4
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "a host sharing this host's address is reached where it is seen",
			self: selfLease, peers: []mesh.Peer{p2.WithSightings([]lease.Sighting{sighting("10.5.6.0-24", "198.51.100.6:4000")}, nil),
				wgPeer("10.5.6.0/24", "192.168.50.1", data(k4, 51820))}, current: holding(),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
peer 10.5.6.0-24 k4 at 198.51.100.6:4000 allowed [10.5.6.0/24] keepalive 2s
write peer k2
write peer k4
kick k2
kick k4
half 10.5.1.0/24 in 10.5.0.0/16
`},
		{name: "a forged lease sighting the public relay at its own endpoint changes no relay choice and makes no peer eager",
			self: lease.Lease{Subnet: selfLease.Subnet, Attrs: selfLease.Attrs.WithSightings(nil, []string{"10.5.2.0-24"})},
			peers: []mesh.Peer{
				p2relay.WithSightings([]lease.Sighting{sighting("10.5.1.0-24", "198.51.100.1:51820"), sighting("10.5.3.0-24", "198.51.100.3:4000")}, nil),
				p3nat.WithSightings(nil, []string{"10.5.2.0-24"}),
				p4.WithSightings([]lease.Sighting{sighting("10.5.2.0-24", "192.168.50.2:51820"), sighting("10.5.2.0-24", "203.0.113.2:9")}, nil),
			}, current: live,
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24] keepalive 2s
peer 10.5.3.0-24 k3 at 192.168.50.2:51830 allowed [10.5.3.0/24] eager keepalive 2s relayed by 10.5.2.0-24
peer 10.5.4.0-24 k4 at 192.168.50.4:51820 allowed [10.5.4.0/24] keepalive 2s
write peer k2
write peer k3
write peer k4
kick k3
kick k4
half 10.5.1.0/24 in 10.5.0.0/16
behind NAT, seen at 198.51.100.1:51820
`},
		{name: "a sighting of this host by a host it has no session with does not make it think it is behind NAT",
			self: selfLease, peers: []mesh.Peer{p2, p4.WithSightings([]lease.Sighting{sighting("10.5.1.0-24", "203.0.113.1:9")}, nil)},
			current: holding(),
			want: `peer 10.5.2.0-24 k2 at 192.168.50.2:51820 allowed [10.5.2.0/24]
peer 10.5.4.0-24 k4 at 192.168.50.4:51820 allowed [10.5.4.0/24]
write peer k2
write peer k4
kick k2
kick k4
half 10.5.1.0/24 in 10.5.0.0/16
`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := opts(`{"Type":"wireguard"}`)
			if tt.opts != "" {
				o = opts(tt.opts)
			}
			d := mesh.Desired{Network: network, Self: tt.self, Peers: tt.peers}
			got := renderPlan(planWhole(d, wholeInput{key: own, opts: o, userspace: tt.userspace, current: tt.current, now: time.Now()}), names)
			if got != tt.want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// badKeyText is what keys.ParseKey says of "nope".
func badKeyText(t *testing.T) string {
	_, err := keys.ParseKey("nope")
	if err == nil {
		t.Fatal(`"nope" parses as a key`)
	}
	return err.Error()
}
