package netkernel

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Nexthop is a nexthop object (`ip nexthop`, Linux 5.3 and later): a
// gateway on a link that routes name by ID instead of carrying the
// gateway themselves.
//
// Why weft uses them: the kernel shares one fib_info among IPv4 routes
// with the same attributes, and looks for a match in a hash table whose
// hash leaves the gateway out. Routes that each have their own gateway
// on one device (a vxlan device's peer routes, each via the peer's VTEP
// address) all land in one bucket, so inserting the n-th walks the n-1
// before it: 50,000 such routes took the kernel itself 29.5 s, growing
// with the square of their number. A route through a nexthop object
// hashes by the object's ID, and the same routes go in in linear time.
// The data path is the same: the route still resolves to the gateway on
// the device, and the packets on the wire do not change.
type Nexthop struct {
	ID       uint32
	Link     int
	Gw       netip.Addr
	OnLink   bool
	Protocol uint8 // who made it; weft's are RouteProtocol
}

// nhmsg is the header of a nexthop message (struct nhmsg).
type nhmsg unix.Nhmsg

func (m *nhmsg) Len() int { return unix.SizeofNhmsg }

func (m *nhmsg) Serialize() []byte {
	b := make([]byte, unix.SizeofNhmsg)
	b[0], b[1], b[2] = m.Family, m.Scope, m.Protocol
	nl.NativeEndian().PutUint32(b[4:], m.Flags)
	return b
}

// rtaNexthopID is RTA_NH_ID, the attribute naming a route's nexthop
// object (golang.org/x/sys/unix has no name for it).
const rtaNexthopID = 30

// NexthopEach calls f with every nexthop object of the namespace, whoever
// made it, as the dump reads it.
func (k *Netlink) NexthopEach(f func(Nexthop)) error {
	k.calls.Count(CallDump)
	req, err := k.request(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP)
	if err != nil {
		return err
	}
	req.AddData(&nhmsg{Family: unix.AF_UNSPEC})
	return req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP, func(msg []byte) bool {
		if len(msg) < unix.SizeofNhmsg {
			return true
		}
		nh := Nexthop{Protocol: msg[2], OnLink: nl.NativeEndian().Uint32(msg[4:8])&unix.RTNH_F_ONLINK != 0}
		eachAttr(msg[unix.SizeofNhmsg:], func(typ uint16, v []byte) {
			switch typ {
			case unix.NHA_ID:
				if len(v) == 4 {
					nh.ID = nl.NativeEndian().Uint32(v)
				}
			case unix.NHA_OIF:
				if len(v) == 4 {
					nh.Link = int(nl.NativeEndian().Uint32(v))
				}
			case unix.NHA_GATEWAY:
				nh.Gw, _ = netip.AddrFromSlice(v)
			}
		})
		if nh.ID != 0 {
			f(nh)
		}
		return true
	})
}

// NexthopSet creates nexthop nh, or with replace set creates or replaces
// it; without replace an ID already taken is EEXIST.
func (k *Netlink) NexthopSet(nh Nexthop, replace bool) error {
	flags := unix.NLM_F_CREATE | unix.NLM_F_EXCL | unix.NLM_F_ACK
	if replace {
		flags = unix.NLM_F_CREATE | unix.NLM_F_REPLACE | unix.NLM_F_ACK
	}
	req, err := k.request(unix.RTM_NEWNEXTHOP, flags)
	if err != nil {
		return err
	}
	msg := &nhmsg{Family: unix.AF_INET, Protocol: nh.Protocol}
	if nh.Gw.Is6() {
		msg.Family = unix.AF_INET6
	}
	if nh.OnLink {
		msg.Flags = unix.RTNH_F_ONLINK
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(nh.ID)))
	req.AddData(nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(nh.Link))))
	req.AddData(nl.NewRtAttr(unix.NHA_GATEWAY, nh.Gw.AsSlice()))
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	return k.write(err)
}

// NexthopDel removes nexthop id, and with it every route through it.
func (k *Netlink) NexthopDel(id uint32) error {
	req, err := k.request(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	req.AddData(&nhmsg{Family: unix.AF_UNSPEC})
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	return k.write(err)
}

// RouteReplaceNexthop adds the route to dst through nexthop id in the main
// table, marked RouteProtocol, or replaces the route there to dst.
func (k *Netlink) RouteReplaceNexthop(dst netip.Prefix, id uint32) error {
	req, err := k.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	msg := nl.NewRtMsg()
	msg.Family, msg.Dst_len, msg.Protocol = unix.AF_INET, uint8(dst.Bits()), uint8(RouteProtocol)
	if dst.Addr().Is6() {
		msg.Family = unix.AF_INET6
	}
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	req.AddData(nl.NewRtAttr(rtaNexthopID, nl.Uint32Attr(id)))
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	return k.write(err)
}

// HopEach calls f with each of weft's routes of family (RouteProtocol,
// main table), as the dump reads it: its destination and Hop, with the
// nexthop object it goes through. The library's route decoder has no
// field for a nexthop ID, so the messages are decoded here.
func (k *Netlink) HopEach(family int, f func(netip.Prefix, Hop)) error {
	k.calls.Count(CallDump)
	req, err := k.request(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	if err != nil {
		return err
	}
	msg := nl.NewRtMsg()
	msg.Family = uint8(family)
	req.AddData(msg)
	return req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(m []byte) bool {
		if dst, hop, ok := decodeHop(m, family); ok {
			f(dst, hop)
		}
		return true
	})
}

// decodeHop reads one route message: ok only for weft's routes of family
// in the main table.
func decodeHop(m []byte, family int) (netip.Prefix, Hop, bool) {
	if len(m) < unix.SizeofRtMsg {
		return netip.Prefix{}, Hop{}, false
	}
	rt := nl.DeserializeRtMsg(m)
	if int(rt.Family) != family || rt.Protocol != uint8(RouteProtocol) || rt.Flags&unix.RTM_F_CLONED != 0 {
		return netip.Prefix{}, Hop{}, false
	}
	table := uint32(rt.Table)
	var hop Hop
	var dst netip.Addr
	eachAttr(m[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.RTA_GATEWAY:
			hop.Gw, _ = netip.AddrFromSlice(v)
			hop.Gw = hop.Gw.Unmap()
		case unix.RTA_OIF:
			if len(v) == 4 {
				hop.Link = int(nl.NativeEndian().Uint32(v))
			}
		case unix.RTA_TABLE:
			if len(v) == 4 {
				table = nl.NativeEndian().Uint32(v)
			}
		case rtaNexthopID:
			if len(v) == 4 {
				hop.NH = nl.NativeEndian().Uint32(v)
			}
		}
	})
	if table != unix.RT_TABLE_MAIN {
		return netip.Prefix{}, Hop{}, false
	}
	if !dst.IsValid() {
		// The default route has no RTA_DST.
		dst = netip.IPv4Unspecified()
		if family == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
	}
	return netip.PrefixFrom(dst.Unmap(), int(rt.Dst_len)), hop, true
}

// NexthopID is the ID of the nexthop object for an IPv4 gateway: the
// address as a number. Each peer's gateway is its own (a VTEP address in
// its subnet), so IDs never collide among weft's, need no table to be
// found again after a restart, and a delta knows them from its plan; the
// gateway it names is still checked against the kernel's at every whole
// apply.
func NexthopID(gw netip.Addr) uint32 {
	if !gw.Is4() {
		return 0
	}
	b := gw.As4()
	return binary.BigEndian.Uint32(b[:])
}

// nexthopsUnsupported reports whether err is a kernel's refusal of
// nexthop objects as such (older than 5.3, or built without them).
func nexthopsUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EPROTONOSUPPORT)
}
