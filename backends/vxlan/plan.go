package vxlan

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

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
	MAC string
}

// FDB sends frames for a VTEP MAC to the peer's PublicIP.
type FDB struct {
	MAC string
	Dst netip.Addr
}

// State is everything the vxlan device should carry.
type State struct {
	// Routes go via the VTEP address on the vxlan device (onlink), or
	// via the PublicIP on the external link (DirectRouting).
	Routes    []underlay.Route
	Neighbors []Neighbor
	FDB       []FDB
}

// Plan computes the desired kernel state. A peer whose BackendData does not
// decode, carries another VNI or a malformed VtepMAC is skipped with a
// problem naming it; the others are planned as usual.
func Plan(d mesh.Desired, opts Options, ext underlay.ExternalInterface) (State, []error) {
	s, problems, _ := plan(d, opts, ext)
	return s, problems
}

// vtepPeer is a peer with its BackendData decoded once.
type vtepPeer struct {
	mesh.Peer
	data BackendData
	mac  net.HardwareAddr // nil when VtepMAC does not parse
	err  error            // set when BackendData does not decode
}

// plan is Plan that also returns which leases publish each VTEP MAC, so
// Apply can tell later deltas apart without decoding every peer again.
func plan(d mesh.Desired, opts Options, ext underlay.ExternalInterface) (State, []error, map[string][]string) {
	peers := make([]vtepPeer, 0, len(d.Peers))
	holders := make(map[string][]string, len(d.Peers))
	owner := make(map[string]mesh.Peer, len(d.Peers))
	for _, p := range d.Peers {
		v := vtepPeer{Peer: p}
		if v.err = json.Unmarshal(p.BackendData, &v.data); v.err == nil {
			if mac, err := net.ParseMAC(v.data.VtepMAC); err == nil && len(mac) == 6 {
				v.mac = mac
				m := mac.String()
				holders[m] = append(holders[m], p.Key)
				if o, ok := owner[m]; !ok || olderLease(p, o) {
					owner[m] = p
				}
			}
		}
		peers = append(peers, v)
	}
	var s State
	var problems []error
	for _, v := range peers {
		p, mac := v.Peer, v.mac
		switch {
		case v.err != nil:
			problems = append(problems, mesh.SkipPeer(p.Key, `BackendData is not vxlan's {"VNI","VtepMAC"}: %v`, v.err))
			continue
		case v.data.VNI != opts.VNI:
			problems = append(problems, mesh.SkipPeer(p.Key, "VNI %d, this host uses %d", v.data.VNI, opts.VNI))
			continue
		case mac == nil:
			problems = append(problems, mesh.SkipPeer(p.Key, "VtepMAC %q is not a MAC address", v.data.VtepMAC))
			continue
		case mac[0]&1 != 0 || mac.String() == "00:00:00:00:00:00":
			problems = append(problems, mesh.SkipPeer(p.Key, "VtepMAC %s is not a unicast MAC (multicast or all zeros)", mac))
			continue
		case owner[mac.String()].Key != p.Key:
			// The FDB would send this host's frames to the other one.
			problems = append(problems, mesh.SkipPeer(p.Key, "VtepMAC %s is also published by %s, leased earlier; skipped", mac, owner[mac.String()].Key))
			continue
		}
		if opts.DirectRouting && ext.OnLink(p.PublicIP) {
			if !p.Standby {
				s.Routes = append(s.Routes, underlay.Route{Dst: p.Subnet, Via: p.PublicIP, Direct: true})
			}
			continue
		}
		vtep := p.Subnet.Addr()
		if !p.Standby {
			// A peer on standby (a switch to vxlan under way) gets its
			// neighbour and FDB entry, so its frames find their way the
			// moment its route comes, but no route yet.
			s.Routes = append(s.Routes, underlay.Route{Dst: p.Subnet, Via: vtep})
		}
		s.Neighbors = append(s.Neighbors, Neighbor{IP: vtep, MAC: mac.String()})
		s.FDB = append(s.FDB, FDB{MAC: mac.String(), Dst: p.PublicIP})
	}
	return s, problems, holders
}

// olderLease reports whether a's lease was created before b's (then the
// lower key): of two leases publishing one VTEP MAC, the older keeps it.
func olderLease(a, b mesh.Peer) bool {
	return a.Created < b.Created || (a.Created == b.Created && a.Key < b.Key)
}

// peerMAC is the VTEP MAC a peer publishes, or "" when its BackendData
// does not decode to one.
func peerMAC(p mesh.Peer) string {
	var data BackendData
	if json.Unmarshal(p.BackendData, &data) != nil {
		return ""
	}
	mac, err := net.ParseMAC(data.VtepMAC)
	if err != nil || len(mac) != 6 {
		return ""
	}
	return mac.String()
}

// MACHolders lists the leases publishing each VTEP MAC in a state.
func MACHolders(peers []mesh.Peer) map[string][]string {
	out := make(map[string][]string, len(peers))
	for _, p := range peers {
		if mac := peerMAC(p); mac != "" {
			out[mac] = append(out[mac], p.Key)
		}
	}
	return out
}

// deltaStandsAlone reports whether a delta's peers can be changed without
// looking at the others, given the MAC holders of the state last applied:
// not when a MAC two leases publish is involved (a duplicate leaving may
// let its twin in; one arriving may collide with a peer outside the delta).
func deltaStandsAlone(before, after []mesh.Peer, holders map[string][]string) bool {
	leaving := map[string]bool{}
	for _, p := range before {
		if mac := peerMAC(p); mac != "" {
			if len(holders[mac]) != 1 {
				return false
			}
			leaving[mac] = true
		}
	}
	arriving := map[string]bool{}
	for _, p := range after {
		mac := peerMAC(p)
		if mac == "" {
			continue
		}
		if arriving[mac] || (len(holders[mac]) > 0 && !leaving[mac]) {
			return false
		}
		arriving[mac] = true
	}
	return true
}
