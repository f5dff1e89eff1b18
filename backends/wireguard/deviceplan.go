package wireguard

import (
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/mesh"
)

// devicePlan is what a whole apply writes to the device.
type devicePlan struct {
	// config is the one ConfigureDevice call (empty: nothing to write).
	config  wgtypes.Config
	changes []Change
	// configured are the peers the device holds afterwards.
	configured []PeerSpec
	// leaseEndpoints are the endpoints the leases name (KeepRoamed's
	// reference at the next apply).
	leaseEndpoints map[keys.Key]netip.AddrPort
	// kick are the peers to start a handshake with.
	kick []PeerSpec
}

// planDevice decides a whole apply from what the device holds (current):
// the private key and port when they differ, and the peer changes that
// make the device hold want (with onDemand, only the peers it holds and
// those behind NAT; endpoints WireGuard roamed to kept, see KeepRoamed).
// It is pure.
func planDevice(current *wgtypes.Device, key keys.Key, port int, want []PeerSpec, onDemand bool, lastEndpoints map[keys.Key]netip.AddrPort, now time.Time) devicePlan {
	var p devicePlan
	if current.PrivateKey != wgtypes.Key(key) {
		k := wgtypes.Key(key)
		p.config.PrivateKey = &k
	}
	if current.ListenPort != port {
		p.config.ListenPort = &port
	}
	have := peerStates(current.Peers)
	if onDemand {
		// Only the peers the device holds are kept up to date (or
		// removed), and peers behind NAT, which are always configured
		// (their handshakes do not come from their lease's address); the
		// others wait in the table for traffic.
		want = configuredOnly(want, have)
	}
	p.leaseEndpoints = make(map[keys.Key]netip.AddrPort, len(want))
	for _, w := range want {
		p.leaseEndpoints[w.PublicKey] = w.leaseEndpoint()
	}
	p.configured = KeepRoamed(want, have, lastEndpoints, now)
	var fresh []PeerSpec
	p.changes, fresh = freshThroughRelay(have, PeerChanges(have, p.configured))
	for _, c := range p.changes {
		p.config.Peers = append(p.config.Peers, toPeerConfig(c))
	}
	p.kick = append(peersToKick(have, p.configured, p.changes, p.config.PrivateKey != nil), fresh...)
	return p
}

// freshThroughRelay removes each peer, before it is set again, that goes
// to a relay's port it was not at: its session goes with it, so its next
// packet starts a handshake, which is how the relay's forwarder learns
// where the ends are (a session carried over from another path would
// send transport messages it cannot place until WireGuard rekeys, 15 s
// and more). It returns the changes and the peers to start handshakes with.
func freshThroughRelay(have []PeerState, changes []Change) ([]Change, []PeerSpec) {
	at := make(map[keys.Key]netip.AddrPort, len(have))
	for _, h := range have {
		at[h.PublicKey] = h.Endpoint
	}
	var out []Change
	var fresh []PeerSpec
	for _, c := range changes {
		if ep, held := at[c.PublicKey]; held && !c.Remove && c.Spec.Relay != "" && ep != c.Spec.Endpoint {
			out = append(out, Change{Remove: true, PublicKey: c.PublicKey})
			fresh = append(fresh, c.Spec)
		}
		out = append(out, c)
	}
	return out, fresh
}

// tunnelHalves are the device's addresses and routes: this host's subnet
// in the Network, its IPv6 subnet when the one device carries both
// families, and PeersNetwork (a route, no address) for outside peers.
func tunnelHalves(d mesh.Desired, opts Options) []netkernel.TunnelHalf {
	halves := []netkernel.TunnelHalf{{Self: d.Self.Subnet, Network: d.Network}}
	if opts.Mode != ModeSeparate && d.IPv6Network.IsValid() && d.Self.IPv6Subnet.IsValid() {
		halves = append(halves, netkernel.TunnelHalf{Self: d.Self.IPv6Subnet, Network: d.IPv6Network})
	}
	if d.PeersNetwork.IsValid() {
		halves = append(halves, netkernel.TunnelHalf{Network: d.PeersNetwork})
	}
	return halves
}

// configuredOnly keeps the wanted peers the device holds, and those
// behind NAT.
func configuredOnly(want []PeerSpec, have []PeerState) []PeerSpec {
	held := make(map[keys.Key]bool, len(have))
	for _, h := range have {
		held[h.PublicKey] = true
	}
	out := make([]PeerSpec, 0, len(have))
	for _, w := range want {
		if held[w.PublicKey] || w.NAT {
			out = append(out, w)
		}
	}
	return out
}

// specKeys are the keys of specs.
func specKeys(specs []PeerSpec) []keys.Key {
	out := make([]keys.Key, 0, len(specs))
	for _, s := range specs {
		out = append(out, s.PublicKey)
	}
	return out
}

func peerStates(peers []wgtypes.Peer) []PeerState {
	out := make([]PeerState, 0, len(peers))
	for _, p := range peers {
		s := PeerState{PublicKey: keys.Key(p.PublicKey), Keepalive: p.PersistentKeepaliveInterval, PSK: keys.Key(p.PresharedKey),
			LastHandshake: p.LastHandshakeTime}
		if p.Endpoint != nil {
			s.Endpoint = p.Endpoint.AddrPort()
			s.Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().Unmap(), s.Endpoint.Port())
		}
		for _, a := range p.AllowedIPs {
			if pfx, ok := netkernel.Prefix(&a); ok {
				s.AllowedIPs = append(s.AllowedIPs, pfx)
			}
		}
		out = append(out, s)
	}
	return out
}

func toPeerConfig(c Change) wgtypes.PeerConfig {
	if c.Remove {
		return wgtypes.PeerConfig{PublicKey: wgtypes.Key(c.PublicKey), Remove: true}
	}
	keepalive := c.Spec.Keepalive
	pc := wgtypes.PeerConfig{
		PublicKey:                   wgtypes.Key(c.PublicKey),
		PersistentKeepaliveInterval: &keepalive,
		ReplaceAllowedIPs:           true,
	}
	if c.Spec.Endpoint.IsValid() { // an outside peer may have none
		pc.Endpoint = net.UDPAddrFromAddrPort(wireEndpoint(c.Spec.Endpoint))
	}
	psk := wgtypes.Key{}
	if c.Spec.PSK != nil {
		psk = wgtypes.Key(*c.Spec.PSK)
	}
	pc.PresharedKey = &psk
	for _, p := range c.Spec.AllowedIPs {
		pc.AllowedIPs = append(pc.AllowedIPs, *netkernel.IPNet(p))
	}
	return pc
}
