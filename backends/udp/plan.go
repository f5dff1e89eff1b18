package udp

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/mesh"
)

// DeviceName is the TUN device the udp backend uses.
const DeviceName = "weft0"

// Overhead is what udp adds: an outer IPv4 and UDP header.
const Overhead = 28

// Options are the "Backend" keys of a udp network config.
type Options struct {
	Port int
	MTU  int
}

// ParseOptions reads and checks the Backend object; errors name the option.
func ParseOptions(raw json.RawMessage) (Options, error) {
	o := Options{Port: 8285}
	var in struct {
		Port *int `json:"Port"`
		MTU  int  `json:"MTU"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return o, fmt.Errorf("udp Backend options: %w", err)
		}
	}
	var err error
	if o.Port, err = options.Port("Port", in.Port, 8285); err != nil {
		return o, err
	}
	o.MTU = in.MTU
	return o, options.MTU(in.MTU)
}

// Peer is another host as the data plane sees it.
type Peer struct {
	Lease    string
	Subnet   netip.Prefix
	Endpoint netip.AddrPort
}

// Table maps destination subnets and source endpoints to peers. It is
// immutable once built; the data plane swaps in a new one atomically.
// Lookups are O(1): the destination is masked to SubnetLen and looked up.
type Table struct {
	subnetBits int
	mask       uint32
	bySubnet   map[uint32]*Peer
	byEndpoint map[netip.AddrPort]*Peer
	// self is this host's subnet (network address); ok is false before
	// there is one, and then nothing is accepted.
	self   uint32
	selfOK bool
}

// NewTable builds the table for the desired state; every peer is reached
// at its PublicIP on port, and only packets for this host's own subnet
// (d.Self) are accepted.
func NewTable(d mesh.Desired, subnetLen, port int) *Table {
	t := &Table{subnetBits: subnetLen, mask: ^uint32(0) << (32 - subnetLen),
		bySubnet: make(map[uint32]*Peer, len(d.Peers)), byEndpoint: make(map[netip.AddrPort]*Peer, len(d.Peers))}
	if s := d.Self.Subnet; s.IsValid() && s.Addr().Is4() && s.Bits() == subnetLen {
		t.self, t.selfOK = u32(s.Addr()), true
	}
	for _, p := range d.Peers {
		if p.Subnet.Bits() != subnetLen || !p.PublicIP.Is4() {
			continue // Compute already dropped these; never trust blindly
		}
		peer := &Peer{Lease: p.Key, Subnet: p.Subnet, Endpoint: netip.AddrPortFrom(p.PublicIP, uint16(port))}
		t.bySubnet[u32(p.Subnet.Addr())] = peer
		t.byEndpoint[peer.Endpoint] = peer
	}
	return t
}

// Len is the number of peers.
func (t *Table) Len() int { return len(t.bySubnet) }

// Route returns the peer whose subnet holds the packet's IPv4 destination.
func (t *Table) Route(pkt []byte) (*Peer, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return nil, false
	}
	p, ok := t.bySubnet[binary.BigEndian.Uint32(pkt[16:20])&t.mask]
	return p, ok
}

// Drop reasons, also the label values of the drop counter.
const (
	DropUnknownPeer = "unknown_peer"
	DropMalformed   = "malformed"
	DropSpoofed     = "spoofed_source"
	// DropNotForHost is a packet for an address outside this host's
	// subnet: the internet, the host's own underlay address, another
	// peer's subnet, a broadcast. Accepting it would let whoever forges a
	// peer's source address reach the host's services or relay through it.
	DropNotForHost = "not_for_this_host"
)

// Accept decides whether a datagram from src may be written to the TUN:
// src must be a known peer's endpoint, the payload a well-formed IPv4
// packet whose length field matches the datagram, its source address
// inside that peer's subnet and its destination inside this host's. It
// returns "" or the reason to drop.
func (t *Table) Accept(src netip.AddrPort, pkt []byte) string {
	peer, ok := t.byEndpoint[netip.AddrPortFrom(src.Addr().Unmap(), src.Port())]
	if !ok {
		return DropUnknownPeer
	}
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return DropMalformed
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || int(binary.BigEndian.Uint16(pkt[2:4])) != len(pkt) || ihl > len(pkt) {
		return DropMalformed
	}
	if binary.BigEndian.Uint32(pkt[12:16])&t.mask != u32(peer.Subnet.Addr()) {
		return DropSpoofed
	}
	if !t.selfOK || binary.BigEndian.Uint32(pkt[16:20])&t.mask != t.self {
		return DropNotForHost
	}
	return ""
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}
