package vxlan

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"iter"
	"net"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Overhead is what VXLAN adds over IPv4 (20 IP + 8 UDP + 8 VXLAN + 14 Ethernet).
const Overhead = 50

// OverheadIPv6 is what VXLAN adds over IPv6 (40 IP + 8 UDP + 8 VXLAN + 14
// Ethernet).
const OverheadIPv6 = 70

// Options are the "Backend" keys of a vxlan network config, as flannel's.
type Options struct {
	VNI  int
	Port int
	// PortDefaulted is set when the config gave Port 0, which flannel hands
	// to the kernel as "its default": 8472.
	PortDefaulted bool
	GBP           bool
	Learning      bool
	MTU           int
	DirectRouting bool
}

// ParseOptions reads and checks the Backend object; errors name the option.
func ParseOptions(raw json.RawMessage) (Options, error) {
	o := Options{VNI: 1, Port: 8472}
	var in struct {
		VNI           *int `json:"VNI"`
		Port          *int `json:"Port"`
		GBP           bool `json:"GBP"`
		Learning      bool `json:"Learning"`
		MTU           int  `json:"MTU"`
		DirectRouting bool `json:"DirectRouting"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return o, fmt.Errorf("vxlan Backend options: %w", err)
		}
	}
	if in.VNI != nil {
		if *in.VNI < 0 || *in.VNI > 1<<24-1 {
			return o, fmt.Errorf(`key "Backend.VNI": %d is not between 0 and 16777215`, *in.VNI)
		}
		o.VNI = *in.VNI
	}
	if in.Port != nil && *in.Port == 0 {
		in.Port, o.PortDefaulted = nil, true
	}
	var err error
	if o.Port, err = options.Port("Port", in.Port, 8472); err != nil {
		return o, err
	}
	if err := options.MTU(in.MTU); err != nil {
		return o, err
	}
	o.GBP, o.Learning, o.MTU, o.DirectRouting = in.GBP, in.Learning, in.MTU, in.DirectRouting
	return o, nil
}

// DeviceName is weft.<VNI>, flannel's flannel.<VNI> renamed.
func (o Options) DeviceName() string { return fmt.Sprintf("weft.%d", o.VNI) }

// DeviceNameIPv6 is weft-v6.<VNI>, flannel's flannel-v6.<VNI> renamed: the
// device of a dual-stack network's IPv6 half.
func (o Options) DeviceNameIPv6() string { return fmt.Sprintf("weft-v6.%d", o.VNI) }

// BackendData is what a vxlan lease publishes, exactly as flannel does.
type BackendData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// EncodeBackendData renders the lease's BackendData.
func EncodeBackendData(vni int, mac net.HardwareAddr) json.RawMessage {
	data, _ := json.Marshal(BackendData{VNI: vni, VtepMAC: mac.String()})
	return data
}

// StableMAC derives the VTEP MAC from the host's public IP and the VNI: the
// same after a restart or a device recreated by hand, so peers' neighbour
// and FDB entries stay valid. Locally administered, unicast.
func StableMAC(publicIP netip.Addr, vni int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(fmt.Sprintf("weft-vtep %s %d", publicIP, vni)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) &^ 0x01
	return mac
}

// Neighbor maps a peer's VTEP address to its VTEP MAC on the device.
type Neighbor struct {
	IP  netip.Addr
	MAC MAC
}

// FDB sends frames for a VTEP MAC to the peer's PublicIP.
type FDB struct {
	MAC MAC
	Dst netip.Addr
}

// State is everything the vxlan device should carry: for each planned
// peer a route (none on standby), and a neighbour and an FDB entry (none
// for a DirectRouting peer, reached by a plain route). It keeps the peers
// it was planned from and yields each kind's entries when asked: Apply
// programs one kind after another, and the three lists at once were 6 MB
// at 50,000 peers.
type State struct {
	peers   []mesh.Peer
	planned []plannedPeer
}

// plannedPeer is a planned peer by its index in State.peers, with its
// VTEP MAC and whether it is reached directly (DirectRouting).
type plannedPeer struct {
	i      int32
	mac    MAC
	direct bool
}

// EachRoute yields the routes: via the VTEP address on the vxlan device
// (onlink), or via the PublicIP on the external link (DirectRouting). A
// whole apply walks them as it compares, never holding a list of them all.
func (s State) EachRoute() iter.Seq[underlay.Route] {
	return func(yield func(underlay.Route) bool) {
		for _, v := range s.planned {
			var r underlay.Route
			switch p := &s.peers[v.i]; {
			case p.Standby:
				// A peer on standby (a switch to vxlan under way) gets its
				// neighbour and FDB entry, so its frames find their way the
				// moment its route comes, but no route yet.
				continue
			case v.direct:
				r = underlay.Route{Dst: p.Subnet, Via: p.PublicIP, Direct: true}
			default:
				r = underlay.Route{Dst: p.Subnet, Via: p.Subnet.Addr()}
			}
			if !yield(r) {
				return
			}
		}
	}
}

// EachNeighbor yields the VTEP addresses' MACs on the device.
func (s State) EachNeighbor() iter.Seq[Neighbor] {
	return func(yield func(Neighbor) bool) {
		for _, v := range s.planned {
			if !v.direct && !yield(Neighbor{IP: s.peers[v.i].Subnet.Addr(), MAC: v.mac}) {
				return
			}
		}
	}
}

// EachFDB yields where frames for each VTEP MAC go.
func (s State) EachFDB() iter.Seq[FDB] {
	return func(yield func(FDB) bool) {
		for _, v := range s.planned {
			if !v.direct && !yield(FDB{MAC: v.mac, Dst: s.peers[v.i].PublicIP}) {
				return
			}
		}
	}
}

// Routes are EachRoute's routes, as a list.
func (s State) Routes() []underlay.Route { return slices.Collect(s.EachRoute()) }

// Neighbors are EachNeighbor's neighbours, as a list.
func (s State) Neighbors() []Neighbor { return slices.Collect(s.EachNeighbor()) }

// FDB are EachFDB's entries, as a list.
func (s State) FDB() []FDB { return slices.Collect(s.EachFDB()) }

// Plan computes the desired kernel state. A peer whose BackendData does not
// decode, carries another VNI or a malformed VtepMAC is skipped with a
// problem naming it; the others are planned as usual.
func Plan(d mesh.Desired, opts Options, ext underlay.ExternalInterface) (State, []error) {
	s, problems, _ := plan(d, opts, ext)
	return s, problems
}

// MAC is a VTEP MAC, as a value: a string of it was two allocations per
// peer, held for as long as the state.
type MAC [6]byte

// String is the MAC as ip and bridge print it.
func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// vtepPeer is how one peer's BackendData read, kept for every peer
// between plan's passes, so it is small (9 bytes): a problem's details
// are read again on the rare path that reports one.
type vtepPeer struct {
	mac     MAC
	decoded bool // BackendData decodes as vxlan's
	macOK   bool // its VtepMAC parses as a MAC of 6 bytes
	vniOK   bool // its VNI is this host's
}

// readVTEP decodes a peer's BackendData.
func readVTEP(p *mesh.Peer, vni int) (v vtepPeer, data BackendData, err error) {
	if err = json.Unmarshal(p.BackendData, &data); err != nil {
		return v, data, err
	}
	v.decoded, v.vniOK = true, data.VNI == vni
	if mac, err := net.ParseMAC(data.VtepMAC); err == nil && len(mac) == 6 {
		v.mac, v.macOK = MAC(mac), true
	}
	return v, data, nil
}

// problem says why a peer whose BackendData read as v is skipped, or nil.
func (v vtepPeer) problem(p *mesh.Peer, vni int) error {
	if v.decoded && v.vniOK && v.macOK {
		return nil
	}
	_, data, err := readVTEP(p, vni)
	switch {
	case err != nil:
		return mesh.SkipPeer(p.Key, `BackendData is not vxlan's {"VNI","VtepMAC"}: %v`, err)
	case !v.vniOK:
		return mesh.SkipPeer(p.Key, "VNI %d, this host uses %d", data.VNI, vni)
	default:
		return mesh.SkipPeer(p.Key, "VtepMAC %q is not a MAC address", data.VtepMAC)
	}
}

// plan is Plan that also counts the leases publishing each VTEP MAC, so
// Apply can tell later deltas apart without decoding every peer again.
// Which of two leases keeps a MAC both publish is worked out for such
// MACs only, not with a map of every peer.
func plan(d mesh.Desired, opts Options, ext underlay.ExternalInterface) (State, []error, map[MAC]int) {
	peers := make([]vtepPeer, len(d.Peers))
	holders := make(map[MAC]int, len(d.Peers))
	shared := false // some MAC is published by more than one lease
	for i := range d.Peers {
		peers[i], _, _ = readVTEP(&d.Peers[i], opts.VNI)
		if v := peers[i]; v.macOK {
			holders[v.mac]++
			shared = shared || holders[v.mac] > 1
		}
	}
	var owner map[MAC]int // the index of the peer that keeps a shared MAC
	if shared {
		owner = map[MAC]int{}
		for i, v := range peers {
			if !v.macOK || holders[v.mac] < 2 {
				continue
			}
			if o, ok := owner[v.mac]; !ok || olderLease(d.Peers[i], d.Peers[o]) {
				owner[v.mac] = i
			}
		}
	}
	s := State{peers: d.Peers, planned: make([]plannedPeer, 0, len(d.Peers))}
	var problems []error
	for i, v := range peers {
		p := &d.Peers[i]
		if err := v.problem(p, opts.VNI); err != nil {
			problems = append(problems, err)
			continue
		}
		if v.mac[0]&1 != 0 || v.mac == (MAC{}) {
			problems = append(problems, mesh.SkipPeer(p.Key, "VtepMAC %s is not a unicast MAC (multicast or all zeros)", v.mac))
			continue
		}
		if o, ok := owner[v.mac]; ok && o != i {
			// The FDB would send this host's frames to the other one.
			problems = append(problems, mesh.SkipPeer(p.Key, "VtepMAC %s is also published by %s, leased earlier; skipped", v.mac, d.Peers[o].Key))
			continue
		}
		s.planned = append(s.planned, plannedPeer{i: int32(i), mac: v.mac, direct: opts.DirectRouting && ext.OnLink(p.PublicIP)})
	}
	return s, problems, holders
}

// olderLease reports whether a's lease was created before b's (then the
// lower key): of two leases publishing one VTEP MAC, the older keeps it.
func olderLease(a, b mesh.Peer) bool {
	return a.Created < b.Created || (a.Created == b.Created && a.Key < b.Key)
}

// peerMAC is the VTEP MAC a peer publishes; ok is false when its
// BackendData does not decode to one.
func peerMAC(p mesh.Peer) (mac MAC, ok bool) {
	v, _, _ := readVTEP(&p, 0)
	return v.mac, v.macOK
}

// MACHolders counts the leases publishing each VTEP MAC in a state.
func MACHolders(peers []mesh.Peer) map[MAC]int {
	out := make(map[MAC]int, len(peers))
	for _, p := range peers {
		if mac, ok := peerMAC(p); ok {
			out[mac]++
		}
	}
	return out
}

// deltaStandsAlone reports whether a delta's peers can be changed without
// looking at the others, given the MAC holders of the state last applied:
// not when a MAC two leases publish is involved (a duplicate leaving may
// let its twin in; one arriving may collide with a peer outside the delta).
func deltaStandsAlone(before, after []mesh.Peer, holders map[MAC]int) bool {
	leaving := map[MAC]bool{}
	for _, p := range before {
		if mac, ok := peerMAC(p); ok {
			if holders[mac] != 1 {
				return false
			}
			leaving[mac] = true
		}
	}
	arriving := map[MAC]bool{}
	for _, p := range after {
		mac, ok := peerMAC(p)
		if !ok {
			continue
		}
		if arriving[mac] || (holders[mac] > 0 && !leaving[mac]) {
			return false
		}
		arriving[mac] = true
	}
	return true
}
