package netkernel

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel is everything the backends ask of the kernel's network stack:
// links, addresses, routes, neighbours and FDB entries, in
// vishvananda/netlink's types and with its method names. Netlink is the
// real one; netkerneltest.Kernel is an in-memory fake that prints its state
// as `ip` and `bridge` do, so apply code is tested without root. List
// calls return whole dumps (the real one retries interrupted dumps); Each
// calls stream them.
type Kernel interface {
	LinkList() ([]netlink.Link, error)
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrAdd(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error
	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	// HopEach calls f with each of weft's routes of family (RouteProtocol,
	// main table) as a Hop, one at a time, keeping none; an interrupted
	// dump (ErrDumpInterrupted) is the caller's to start over.
	HopEach(family int, f func(dst netip.Prefix, h Hop)) error
	RouteReplace(route *netlink.Route) error
	// RouteReplaceNexthop sets weft's route to dst through nexthop object
	// id, replacing the route to dst.
	RouteReplaceNexthop(dst netip.Prefix, id uint32) error
	// NexthopEach calls f with every nexthop object, whoever made it.
	NexthopEach(f func(Nexthop)) error
	// NexthopSet creates a nexthop object (EEXIST when its ID is taken)
	// or, with replace, creates or replaces it.
	NexthopSet(nh Nexthop, replace bool) error
	// NexthopDel removes a nexthop object and the routes through it.
	NexthopDel(id uint32) error
	RouteDel(route *netlink.Route) error
	// NeighEach calls f with each neighbour of family on a link
	// (AF_BRIDGE: its FDB entries), one at a time as the dump reads it,
	// keeping none; an interrupted dump (ErrDumpInterrupted) is the
	// caller's to start over, as RouteEach's.
	NeighEach(linkIndex, family int, f func(Neighbour)) error
	NeighSet(neigh *netlink.Neigh) error
	NeighDel(neigh *netlink.Neigh) error
}

// Neighbour is a neighbour or FDB entry as a dump reports it, in values.
type Neighbour struct {
	Link int
	IP   netip.Addr // the neighbour's address; an FDB entry's destination
	// MAC is the link-layer address when it has 6 bytes (HasMAC).
	MAC    [6]byte
	HasMAC bool
}

// Kinds of kernel call a Calls counts.
const (
	CallDump    = "netlink_dump"  // a netlink table or list read
	CallGet     = "netlink_get"   // one netlink object read
	CallWrite   = "netlink_write" // one netlink object set or deleted
	CallWGRead  = "wg_read"       // a WireGuard device read (every peer)
	CallWGWrite = "wg_write"      // a WireGuard device configuration
)

// Calls counts kernel calls by kind, for weft_kernel_calls_total: how much
// work a change costs, visible without tracing the process. The zero value
// is ready; a nil *Calls counts nothing.
type Calls struct {
	counts sync.Map // kind → *atomic.Uint64
}

// Count records one call of kind.
func (c *Calls) Count(kind string) {
	if c == nil {
		return
	}
	n, ok := c.counts.Load(kind)
	if !ok {
		n, _ = c.counts.LoadOrStore(kind, new(atomic.Uint64))
	}
	n.(*atomic.Uint64).Add(1)
}

// Snapshot returns the calls counted so far, by kind.
func (c *Calls) Snapshot() map[string]uint64 {
	out := map[string]uint64{}
	if c == nil {
		return out
	}
	c.counts.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// Netlink is the Kernel of one network namespace, reached through a
// netlink handle; it counts every call in its Calls and retries dumps the
// kernel interrupted.
type Netlink struct {
	h     *netlink.Handle
	ns    netns.NsHandle // the handle's namespace; none: the caller's
	calls *Calls
	// raw is the socket of the requests the library has no call for,
	// opened at the first one.
	rawMu sync.Mutex
	raw   *nl.SocketHandle
}

var _ Kernel = (*Netlink)(nil)

// NewNetlink returns the Kernel of the namespace weftd runs in, counting
// into calls (nil: not counted). Its requests share two sockets opened
// once (the library's handle and one for the requests the library has no
// call for): a socket opened and closed for every write was seven more
// system calls each, about 2 s of a start among 50,000 leases.
func NewNetlink(calls *Calls) *Netlink {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		// The zero handle opens a socket per request: slower, not wrong.
		h = &netlink.Handle{}
	} else {
		h.SetSocketTimeout(socketTimeout)
	}
	return &Netlink{h: h, ns: netns.None(), calls: calls}
}

// socketTimeout bounds each read and write on a shared socket, as the
// library bounds those on the sockets it opens per request.
const socketTimeout = time.Minute

// NewNetlinkAt returns the Kernel of namespace ns (which stays the
// caller's to close), counting into calls.
func NewNetlinkAt(ns netns.NsHandle, calls *Calls) (*Netlink, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	return &Netlink{h: h, ns: ns, calls: calls}, nil
}

// Close releases the Kernel's sockets.
func (k *Netlink) Close() {
	k.h.Close()
	k.rawMu.Lock()
	defer k.rawMu.Unlock()
	if k.raw != nil {
		k.raw.Close()
		k.raw = nil
	}
}

// write counts one write and passes its error through.
func (k *Netlink) write(err error) error {
	k.calls.Count(CallWrite)
	return err
}

// LinkList lists every link.
func (k *Netlink) LinkList() ([]netlink.Link, error) {
	k.calls.Count(CallDump)
	return Retry(k.h.LinkList)
}

// LinkByName finds a link by name.
func (k *Netlink) LinkByName(name string) (netlink.Link, error) {
	k.calls.Count(CallGet)
	return k.h.LinkByName(name)
}

// LinkAdd creates a link.
func (k *Netlink) LinkAdd(link netlink.Link) error { return k.write(k.h.LinkAdd(link)) }

// LinkDel removes a link, and with it its addresses, routes and neighbours.
func (k *Netlink) LinkDel(link netlink.Link) error { return k.write(k.h.LinkDel(link)) }

// LinkSetUp brings a link up.
func (k *Netlink) LinkSetUp(link netlink.Link) error { return k.write(k.h.LinkSetUp(link)) }

// LinkSetMTU sets a link's MTU.
func (k *Netlink) LinkSetMTU(link netlink.Link, mtu int) error {
	return k.write(k.h.LinkSetMTU(link, mtu))
}

// AddrList lists a link's addresses of family.
func (k *Netlink) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	k.calls.Count(CallDump)
	return Retry(func() ([]netlink.Addr, error) { return k.h.AddrList(link, family) })
}

// AddrAdd adds an address to a link.
func (k *Netlink) AddrAdd(link netlink.Link, addr *netlink.Addr) error {
	return k.write(k.h.AddrAdd(link, addr))
}

// AddrDel removes an address from a link.
func (k *Netlink) AddrDel(link netlink.Link, addr *netlink.Addr) error {
	return k.write(k.h.AddrDel(link, addr))
}

// RouteListFiltered lists the routes of family that match filter on the
// fields filterMask names.
func (k *Netlink) RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error) {
	k.calls.Count(CallDump)
	return Retry(func() ([]netlink.Route, error) { return k.h.RouteListFiltered(family, filter, filterMask) })
}

// RouteReplace adds a route or replaces the one to the same destination.
func (k *Netlink) RouteReplace(route *netlink.Route) error { return k.write(k.h.RouteReplace(route)) }

// RouteDel removes a route.
func (k *Netlink) RouteDel(route *netlink.Route) error { return k.write(k.h.RouteDel(route)) }

// NeighEach calls f with each neighbour of family on a link (AF_BRIDGE:
// its FDB entries) as the dump reads it. The library has no streaming
// neighbour dump, and its decoder makes three allocations an entry (100,000
// entries at every resync among 50,000 peers): this is its request, each
// message decoded here in place.
func (k *Netlink) NeighEach(linkIndex, family int, f func(Neighbour)) error {
	k.calls.Count(CallDump)
	req, err := k.request(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
	if err != nil {
		return err
	}
	req.AddData(&netlink.Ndmsg{Family: uint8(family), Index: uint32(linkIndex)})
	return req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH, func(msg []byte) bool {
		// The kernel filters by link only when asked strictly; the family
		// and link are checked here, as the library's NeighList does.
		if n, ok := decodeNeighbour(msg); ok && n.Link == linkIndex && int(msg[0]) == family {
			f(n)
		}
		return true
	})
}

// decodeNeighbour reads one neighbour message (struct ndmsg, then
// NDA_DST and NDA_LLADDR) without allocating.
func decodeNeighbour(msg []byte) (Neighbour, bool) {
	const sizeofNdmsg = 12
	if len(msg) < sizeofNdmsg {
		return Neighbour{}, false
	}
	n := Neighbour{Link: int(int32(nl.NativeEndian().Uint32(msg[4:8])))}
	eachAttr(msg[sizeofNdmsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			if a, ok := netip.AddrFromSlice(v); ok {
				n.IP = a.Unmap()
			}
		case unix.NDA_LLADDR:
			if len(v) == len(n.MAC) {
				copy(n.MAC[:], v)
				n.HasMAC = true
			}
		}
	})
	return n, true
}

// eachAttr calls f with the type and value of each netlink attribute in b,
// allocating nothing.
func eachAttr(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(nl.NativeEndian().Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		f(nl.NativeEndian().Uint16(b[2:4])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofRtAttr:l])
		l = (l + unix.RTA_ALIGNTO - 1) &^ (unix.RTA_ALIGNTO - 1)
		if l >= len(b) {
			return
		}
		b = b[l:]
	}
}

// request is a netlink request of proto for the namespace k programs, on
// the Kernel's own socket there, for what the library has a decoder but no
// call for.
func (k *Netlink) request(proto, flags int) (*nl.NetlinkRequest, error) {
	req := nl.NewNetlinkRequest(proto, flags)
	k.rawMu.Lock()
	defer k.rawMu.Unlock()
	if k.raw == nil {
		s, err := nl.GetNetlinkSocketAt(k.ns, netns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("netlink socket: %w", err)
		}
		tv := unix.NsecToTimeval(socketTimeout.Nanoseconds())
		s.SetSendTimeout(&tv)
		s.SetReceiveTimeout(&tv)
		k.raw = &nl.SocketHandle{Socket: s}
	}
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: k.raw}
	return req, nil
}

// NeighSet adds or replaces a neighbour or FDB entry.
func (k *Netlink) NeighSet(neigh *netlink.Neigh) error { return k.write(k.h.NeighSet(neigh)) }

// NeighDel removes a neighbour or FDB entry.
func (k *Netlink) NeighDel(neigh *netlink.Neigh) error { return k.write(k.h.NeighDel(neigh)) }
