package wireguard

import (
	"encoding/json"
	"net/netip"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/backends/wireguard/relay"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/mesh"
)

// wholePlan is everything a whole apply writes, decided by planWhole
// before the first write: the apply itself only carries it out.
type wholePlan struct {
	// found is what the hosts' sightings say (discover): where peers
	// behind NAT are reached, whether this host is behind NAT, and which
	// pairs go through a relay.
	found discovery
	// peers are the peers wanted; holders the leases publishing each key;
	// problems the peers skipped, each naming its lease.
	peers    []PeerSpec
	holders  map[keys.Key][]string
	problems []error
	// notEager counts the peers behind NAT beyond the bound on those
	// configured eagerly (capEager).
	notEager int
	// onDemand says whether the device holds only the peers in use.
	onDemand bool
	// relaying are the pairs behind NAT that chose this host as their
	// relay (relayedPairs).
	relaying []relay.Pair
	// device is the one write to the device (key, port, peer changes)
	// and the handshakes to start.
	device devicePlan
	// halves are the device's addresses and routes; direct are
	// DirectRouting's plain routes via the external interface.
	halves []netkernel.TunnelHalf
	direct []underlay.Route
	// ipv6 says the desired state is the IPv6 half (its Network is
	// IPv6): the family of the routes direct is compared with.
	ipv6 bool
}

// wholeInput is what a whole plan reads besides the desired state: plain
// values, the device as last read among them.
type wholeInput struct {
	key  keys.Key
	opts Options
	// userspace says the device is wireguard-go (the on-demand mode
	// needs it).
	userspace bool
	// current is the device as read before the plan.
	current *wgtypes.Device
	// lastEndpoints are the endpoints the leases named at the last whole
	// apply (KeepRoamed).
	lastEndpoints map[keys.Key]netip.AddrPort
	now           time.Time
}

// planWhole decides a whole apply of d: discovery, the peers, the
// on-demand mode, the device's configuration, its addresses and routes,
// and DirectRouting's routes. It is pure: it reads only its arguments and
// writes nothing.
func planWhole(d mesh.Desired, in wholeInput) wholePlan {
	p := wholePlan{found: discover(d, liveSessions(in.current, in.now))}
	p.peers, p.problems, p.holders = plan(d, in.key.Public(), in.opts, p.found)
	p.notEager = capEager(p.peers, in.opts, p.found.self.IsValid())
	p.relaying = relayedPairs(d, p.peers)
	p.onDemand = in.userspace && (in.opts.OnDemandPeers == OnDemandOn ||
		in.opts.OnDemandPeers == OnDemandAuto && len(p.peers) > OnDemandThreshold)
	p.device = planDevice(in.current, in.key, in.opts.ListenPort, p.peers, p.onDemand, in.lastEndpoints, in.now)
	p.halves = tunnelHalves(d, in.opts)
	p.direct, p.ipv6 = DirectRoutes(d, in.opts), d.Network.Addr().Is6()
	return p
}

// capEager leaves at most maxEager peers behind NAT eager (configured at
// once, never idled, kept open with keepalives), the first in the plan's
// order (by subnet, as every host orders them); the others are
// configured for traffic only, as any on-demand peer, and counted. A
// lease can say that its own host is behind NAT, so the bound keeps forged
// leases from holding an on-demand host at its fully configured size.
// Outside peers are always configured and are not counted.
func capEager(peers []PeerSpec, opts Options, selfBehindNAT bool) (notEager int) {
	eager := 0
	for i := range peers {
		if !peers[i].NAT || strings.HasPrefix(peers[i].Lease, "peers/") {
			continue
		}
		if eager < maxEager {
			eager++
			continue
		}
		peers[i].NAT = false
		if !selfBehindNAT {
			peers[i].Keepalive = opts.PersistentKeepalive
		}
		notEager++
	}
	return notEager
}

// liveSessions says whether the device holds a session with peer p: a
// handshake within RejectAfter with the key p's lease publishes.
func liveSessions(current *wgtypes.Device, now time.Time) func(mesh.Peer) bool {
	live := map[keys.Key]bool{}
	for _, peer := range current.Peers {
		if !peer.LastHandshakeTime.IsZero() && now.Sub(peer.LastHandshakeTime) < RejectAfter {
			live[keys.Key(peer.PublicKey)] = true
		}
	}
	return func(p mesh.Peer) bool {
		var data BackendData
		if json.Unmarshal(p.BackendData, &data) != nil {
			return false
		}
		k, err := keys.ParseKey(data.PublicKey)
		return err == nil && live[k]
	}
}
