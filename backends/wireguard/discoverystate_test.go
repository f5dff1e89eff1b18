package wireguard

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// TestObserveOnFakes: what a host publishes of what its device sees, read
// from the fake device. A peer whose packets come from another endpoint
// than its lease names, with a handshake within RejectAfter, is sighted
// there; an older handshake is no sighting. Once other hosts see this
// host elsewhere than its lease says, it is behind NAT and publishes the
// peers it reaches directly: those with a recent handshake whose received
// bytes moved since the last look (the first look is only a baseline).
// Finding out it is behind NAT signals DiscoveryChanged, so weftd
// publishes at once.
func TestObserveOnFakes(t *testing.T) {
	h := newFakeHost(t, `{"Type":"wireguard","Implementation":"kernel"}`)
	ctx := context.Background()
	k2, k3 := mustKey(t), mustKey(t)
	p2 := wgPeer("10.5.2.0/24", "192.168.50.2", data(k2, 51820))
	p3 := wgPeer("10.5.3.0/24", "192.168.50.3", data(k3, 51820))
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self("10.5.1.0/24"), Peers: []mesh.Peer{p2, p3}}
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	observe := func(when string) Observation {
		t.Helper()
		obs, err := h.b.Observe()
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		return obs
	}
	if obs := observe("nothing seen"); len(obs.Seen) > 0 || len(obs.Reach) > 0 || obs.BehindNAT {
		t.Errorf("with every peer where its lease says: %+v, want nothing", obs)
	}

	now := time.Now()
	roamed := netip.MustParseAddrPort("203.0.113.3:4000")
	if !h.control.SetEndpoint(DeviceName, wgtypes.Key(k3), roamed) || !h.control.SetHandshake(DeviceName, wgtypes.Key(k3), now, 100, 100) {
		t.Fatal("the fake has no peer k3")
	}
	obs := observe("k3 roamed")
	if want := []lease.Sighting{{Lease: "10.5.3.0-24", Endpoint: roamed}}; !slices.Equal(obs.Seen, want) || obs.BehindNAT || len(obs.Reach) > 0 {
		t.Errorf("k3 seen elsewhere: %+v, want it sighted at %s and nothing reached (not behind NAT)", obs, roamed)
	}
	h.control.SetHandshake(DeviceName, wgtypes.Key(k3), now.Add(-RejectAfter-time.Second), 100, 100)
	if obs := observe("k3's handshake stale"); len(obs.Seen) > 0 {
		t.Errorf("a sighting from a handshake older than RejectAfter: %+v", obs.Seen)
	}

	// Host 2, with which this host has a session, sees this host at its
	// NAT's mapping.
	h.control.SetHandshake(DeviceName, wgtypes.Key(k2), time.Now(), 0, 0)
	d.Peers[0] = p2.WithSightings([]lease.Sighting{{Lease: "10.5.1.0-24", Endpoint: netip.MustParseAddrPort("198.51.100.1:51820")}}, nil)
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.b.DiscoveryChanged():
	default:
		t.Error("finding out it is behind NAT did not signal DiscoveryChanged")
	}
	if obs := observe("behind NAT, k2 silent"); !obs.BehindNAT || len(obs.Reach) > 0 {
		t.Errorf("behind NAT with k2's bytes as at the first look (the baseline): %+v, want BehindNAT and no peer reached", obs)
	}
	h.control.SetHandshake(DeviceName, wgtypes.Key(k2), time.Now(), 900, 600)
	if obs := observe("behind NAT, k2's bytes moved"); !obs.BehindNAT || !slices.Equal(obs.Reach, []string{"10.5.2.0-24"}) {
		t.Errorf("k2 (public) live: %+v, want Reach [10.5.2.0-24] alone at once (k3's handshake is stale)", obs)
	}
}

// TestReachHeld: a direct path to a peer behind NAT is published as
// reached only once it has been live at two looks reachHold apart (a
// public peer, a relay, at once), and dropped at the first look
// that finds it dead (no packet within liveWindow); a path live at
// alternate looks is never published.
func TestReachHeld(t *testing.T) {
	k := mustKey(t)
	s := newDiscoveryState()
	s.now.self = netip.MustParseAddrPort("198.51.100.1:51820") // behind NAT
	holders := map[keys.Key][]string{k: {"10.5.2.0-24"}}
	start := time.Now()
	look := func(after time.Duration, rx int64) []string {
		now := start.Add(after)
		dev := &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: wgtypes.Key(k), ReceiveBytes: rx, LastHandshakeTime: now.Add(-time.Second)}}}
		return s.observe(dev, []PeerSpec{{Lease: "10.5.2.0-24", NAT: true}}, holders, now).Reach
	}
	steps := []struct {
		after time.Duration
		rx    int64
		want  bool
	}{
		{0, 100, false},                // the baseline
		{2 * time.Second, 200, false},  // live since now
		{4 * time.Second, 300, true},   // live for reachHold: published
		{6 * time.Second, 300, true},   // no packet for 2 s: still within liveWindow
		{10 * time.Second, 300, false}, // none for 6 s: dead, dropped at once
		{12 * time.Second, 400, false}, // live again: held anew
		{20 * time.Second, 400, false}, // dead before it held
		{22 * time.Second, 500, false},
		{30 * time.Second, 500, false},
		{32 * time.Second, 600, false},
		{34 * time.Second, 700, true},
	}
	for _, st := range steps {
		if got := look(st.after, st.rx); (len(got) == 1) != st.want {
			t.Errorf("at %v with %d bytes: reach %v, want published %v", st.after, st.rx, got, st.want)
		}
	}
	// A public peer (a relay) is published at its first live look.
	public := newDiscoveryState()
	public.now.self = s.now.self
	for i, rx := range []int64{100, 200} {
		now := start.Add(time.Duration(i) * 2 * time.Second)
		dev := &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: wgtypes.Key(k), ReceiveBytes: rx, LastHandshakeTime: now}}}
		if got := public.observe(dev, []PeerSpec{{Lease: "10.5.2.0-24"}}, holders, now).Reach; (len(got) == 1) != (i == 1) {
			t.Errorf("a public peer at look %d: reach %v", i, got)
		}
	}
}

// TestRelayChoiceOnFakes: a host behind NAT reaches a peer behind NAT
// through the public host both reach: on the fake device the relayed
// peer keeps its subnet and is reached at the port the relay publishes
// for the pair; the relay's peer carries only its own subnet; Relays says
// so. Once both publish that they reach each other, the pair goes direct
// (at the peer's NAT mapping, not held at the relay's port) and Relays is
// empty.
func TestRelayChoiceOnFakes(t *testing.T) {
	h := newFakeHost(t, `{"Type":"wireguard","Implementation":"kernel"}`)
	ctx := context.Background()
	k2, k3 := mustKey(t), mustKey(t)
	seenBy2 := []lease.Sighting{{Lease: "10.5.1.0-24", Endpoint: netip.MustParseAddrPort("198.51.100.1:51820")},
		{Lease: "10.5.3.0-24", Endpoint: netip.MustParseAddrPort("198.51.100.3:4000")}}
	// Host 2 relays the pair of this host and host 3 on port 51830.
	p2 := wgPeer("10.5.2.0/24", "192.168.50.2", string(encodeBackendData(k2, 51820, false,
		[]RelayPort{{Pair: [2]string{"10.5.1.0-24", "10.5.3.0-24"}, Port: 51830}}))).WithSightings(seenBy2, nil)
	// Host 3 says in its lease that it is behind NAT.
	p3 := wgPeer("10.5.3.0/24", "172.31.3.2", string(encodeBackendData(k3, 51820, true, nil)))
	selfLease := self("10.5.1.0/24")
	apply := func(selfReach, reach3 []string) {
		t.Helper()
		s := selfLease
		s.Attrs = s.Attrs.WithSightings(nil, selfReach)
		d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: s, Peers: []mesh.Peer{p2, p3.WithSightings(nil, reach3)}}
		// Host 2's sighting of this host counts once they have a session.
		for range 2 {
			if err := h.b.Apply(ctx, d); err != nil {
				t.Fatal(err)
			}
			h.control.SetHandshake(DeviceName, wgtypes.Key(k2), time.Now(), 100, 100)
		}
	}
	allowed := func() map[keys.Key]string {
		dev, err := h.control.Device(DeviceName)
		if err != nil {
			t.Fatal(err)
		}
		out := map[keys.Key]string{}
		for _, p := range dev.Peers {
			var ips []string
			for _, a := range p.AllowedIPs {
				ips = append(ips, a.String())
			}
			slices.Sort(ips)
			out[keys.Key(p.PublicKey)] = p.Endpoint.String() + " " + join(ips)
		}
		return out
	}

	apply([]string{"10.5.2.0-24"}, []string{"10.5.2.0-24"})
	if got := h.b.Relays(); len(got) != 1 || got["10.5.3.0-24"] != "10.5.2.0-24" {
		t.Errorf("Relays %v, want 10.5.3.0-24 through 10.5.2.0-24", got)
	}
	got := allowed()
	if got[k2] != "192.168.50.2:51820 10.5.2.0/24" || got[k3] != "192.168.50.2:51830 10.5.3.0/24" {
		t.Errorf("relayed, the device holds k2 %q and k3 %q; want each its own subnet, k3 at the relay's port for the pair",
			got[k2], got[k3])
	}

	apply([]string{"10.5.2.0-24", "10.5.3.0-24"}, []string{"10.5.2.0-24", "10.5.1.0-24"})
	if got := h.b.Relays(); len(got) != 0 {
		t.Errorf("Relays %v once the pair reaches each other, want none", got)
	}
	got = allowed()
	if got[k2] != "192.168.50.2:51820 10.5.2.0/24" || got[k3] != "198.51.100.3:4000 10.5.3.0/24" {
		t.Errorf("direct, the device holds k2 %q and k3 %q; want each its own subnet", got[k2], got[k3])
	}
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}
