package netkerneltest

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
)

// Kernel is an in-memory netkernel.Kernel: links, addresses, main-table
// routes, neighbours and FDB entries, with the errors the kernel gives
// (EEXIST, ESRCH, ENOENT, a missing link). It prints its state as `ip` and
// `bridge` do, so backend tests compare golden text and run without root.
// The same backends are tested against the real kernel in a netns (build
// tag netns). The zero value is not usable; use NewKernel.
type Kernel struct {
	// NoWireGuard makes LinkAdd of a WireGuard link fail as on a kernel
	// without the module (EOPNOTSUPP).
	NoWireGuard bool
	// Fail, when set, is asked before every write ("route replace
	// 10.5.2.0/24", "neigh set 10.5.2.0", ...); an error it returns is the
	// call's, so tests can check that apply keeps going past a failure.
	Fail func(op string) error
	// NoNexthops makes nexthop calls fail as on a kernel older than 5.3
	// (EOPNOTSUPP).
	NoNexthops bool
	// InterruptDumps is how many neighbour dumps to come are interrupted
	// part way (set it before the kernel is used).
	InterruptDumps int

	mu        sync.Mutex
	nextIndex int
	links     map[string]netlink.Link
	addrs     map[int][]netip.Prefix
	routes    []netlink.Route
	neighs    []netlink.Neigh
	writes    int
	// nexthops are the nexthop objects by ID; routeNexthop the object
	// each route through one names, by destination (its routes entry
	// carries the object's link and gateway, as the kernel reports them).
	nexthops     map[uint32]netkernel.Nexthop
	routeNexthop map[netip.Prefix]uint32
}

var _ netkernel.Kernel = (*Kernel)(nil)

// NewKernel returns a kernel with no links.
func NewKernel() *Kernel {
	return &Kernel{nextIndex: 2, links: map[string]netlink.Link{}, addrs: map[int][]netip.Prefix{},
		nexthops: map[uint32]netkernel.Nexthop{}, routeNexthop: map[netip.Prefix]uint32{}}
}

// AddExternal adds an up veth named name with address addr (a prefix on
// its segment) and returns the ExternalInterface a backend gets for it.
func (k *Kernel) AddExternal(name string, addr netip.Prefix, mtu int) underlay.ExternalInterface {
	k.mu.Lock()
	defer k.mu.Unlock()
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu, Flags: net.FlagUp}}
	k.addLink(link)
	k.addrs[link.Index] = []netip.Prefix{addr}
	return underlay.ExternalInterface{Name: name, Index: link.Index, MTU: mtu, Addr: addr.Addr(), Prefixes: []netip.Prefix{addr.Masked()}}
}

func (k *Kernel) addLink(link netlink.Link) {
	link.Attrs().Index = k.nextIndex
	k.nextIndex++
	k.links[link.Attrs().Name] = link
}

// Writes counts the calls that changed state.
func (k *Kernel) Writes() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.writes
}

// write asks Fail and counts a write that goes ahead.
func (k *Kernel) write(format string, args ...any) error {
	if k.Fail != nil {
		if err := k.Fail(fmt.Sprintf(format, args...)); err != nil {
			return err
		}
	}
	k.writes++
	return nil
}

func (k *Kernel) byIndex(idx int) (netlink.Link, bool) {
	for _, l := range k.links {
		if l.Attrs().Index == idx {
			return l, true
		}
	}
	return nil, false
}

// LinkList lists every link, in index order (copies).
func (k *Kernel) LinkList() ([]netlink.Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]netlink.Link, 0, len(k.links))
	for _, l := range k.links {
		out = append(out, copyLink(l))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Attrs().Index < out[j].Attrs().Index })
	return out, nil
}

// LinkByName finds a link, as netlink does (a copy: changing it changes
// nothing here).
func (k *Kernel) LinkByName(name string) (netlink.Link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.links[name]
	if !ok {
		return nil, netlink.LinkNotFoundError{}
	}
	return copyLink(l), nil
}

func copyLink(l netlink.Link) netlink.Link {
	switch v := l.(type) {
	case *netlink.Vxlan:
		c := *v
		return &c
	case *netlink.Wireguard:
		c := *v
		return &c
	case *netlink.Tuntap:
		c := *v
		return &c
	case *netlink.Veth:
		c := *v
		return &c
	case *netlink.Iptun:
		c := *v
		return &c
	}
	panic(fmt.Sprintf("fake kernel: link type %T", l))
}

// LinkAdd creates a link; EEXIST when the name is taken.
func (k *Kernel) LinkAdd(link netlink.Link) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	name := link.Attrs().Name
	if _, ok := k.links[name]; ok {
		return unix.EEXIST
	}
	if _, ok := link.(*netlink.Wireguard); ok && k.NoWireGuard {
		return unix.EOPNOTSUPP
	}
	if err := k.write("link add %s", name); err != nil {
		return err
	}
	c := copyLink(link)
	c.Attrs().Flags &^= net.FlagUp
	if c.Attrs().MTU == 0 {
		c.Attrs().MTU = 1500
	}
	k.addLink(c)
	link.Attrs().Index = c.Attrs().Index
	return nil
}

// AddTUN adds a TUN device as wireguard-go or the udp backend would.
func (k *Kernel) AddTUN(name string, mtu int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.addLink(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, Mode: netlink.TUNTAP_MODE_TUN})
}

// LinkDel removes a link and everything on it, as the kernel does.
func (k *Kernel) LinkDel(link netlink.Link) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.links[link.Attrs().Name]
	if !ok {
		return netlink.LinkNotFoundError{}
	}
	if err := k.write("link del %s", l.Attrs().Name); err != nil {
		return err
	}
	idx := l.Attrs().Index
	delete(k.links, l.Attrs().Name)
	delete(k.addrs, idx)
	k.routes = slices.DeleteFunc(k.routes, func(r netlink.Route) bool { return r.LinkIndex == idx })
	k.neighs = slices.DeleteFunc(k.neighs, func(n netlink.Neigh) bool { return n.LinkIndex == idx })
	for id, nh := range k.nexthops {
		if nh.Link == idx {
			delete(k.nexthops, id)
		}
	}
	k.pruneRouteNexthops()
	return nil
}

// pruneRouteNexthops forgets the nexthop of each destination no route
// goes to any more.
func (k *Kernel) pruneRouteNexthops() {
	have := map[netip.Prefix]bool{}
	for _, r := range k.routes {
		have[dstOf(&r)] = true
	}
	for dst := range k.routeNexthop {
		if !have[dst] {
			delete(k.routeNexthop, dst)
		}
	}
}

func (k *Kernel) linkOf(link netlink.Link) (netlink.Link, error) {
	l, ok := k.links[link.Attrs().Name]
	if !ok || l.Attrs().Index != link.Attrs().Index {
		return nil, netlink.LinkNotFoundError{}
	}
	return l, nil
}

// LinkSetUp brings a link up.
func (k *Kernel) LinkSetUp(link netlink.Link) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, err := k.linkOf(link)
	if err != nil {
		return err
	}
	if err := k.write("link set %s up", l.Attrs().Name); err != nil {
		return err
	}
	l.Attrs().Flags |= net.FlagUp
	return nil
}

// LinkSetMTU sets a link's MTU.
func (k *Kernel) LinkSetMTU(link netlink.Link, mtu int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, err := k.linkOf(link)
	if err != nil {
		return err
	}
	if err := k.write("link set %s mtu %d", l.Attrs().Name, mtu); err != nil {
		return err
	}
	l.Attrs().MTU = mtu
	return nil
}

// AddrList lists a link's IPv4 addresses.
func (k *Kernel) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, err := k.linkOf(link)
	if err != nil {
		return nil, err
	}
	var out []netlink.Addr
	for _, p := range k.addrs[l.Attrs().Index] {
		if family == netlink.FAMILY_ALL || p.Addr().Is4() == (family == netlink.FAMILY_V4) {
			out = append(out, netlink.Addr{IPNet: netkernel.IPNet(p), LinkIndex: l.Attrs().Index})
		}
	}
	return out, nil
}

// AddrAdd adds an address; EEXIST when the link has it.
func (k *Kernel) AddrAdd(link netlink.Link, addr *netlink.Addr) error {
	return k.changeAddr(link, addr, true)
}

// AddrDel removes an address; EADDRNOTAVAIL when the link lacks it.
func (k *Kernel) AddrDel(link netlink.Link, addr *netlink.Addr) error {
	return k.changeAddr(link, addr, false)
}

// changeAddr adds (add) or removes an address, with the kernel's errors.
func (k *Kernel) changeAddr(link netlink.Link, addr *netlink.Addr, add bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, err := k.linkOf(link)
	if err != nil {
		return err
	}
	p, _ := netkernel.Prefix(addr.IPNet)
	idx := l.Attrs().Index
	has := slices.Contains(k.addrs[idx], p)
	switch {
	case add && has:
		return unix.EEXIST
	case !add && !has:
		return unix.EADDRNOTAVAIL
	}
	verb := map[bool]string{true: "add", false: "del"}[add]
	if err := k.write("addr %s %s dev %s", verb, p, l.Attrs().Name); err != nil {
		return err
	}
	if add {
		k.addrs[idx] = append(k.addrs[idx], p)
	} else {
		k.addrs[idx] = slices.DeleteFunc(k.addrs[idx], func(a netip.Prefix) bool { return a == p })
	}
	return nil
}

// RouteListFiltered lists routes matching filter on the protocol and table
// (the only filters weft uses).
func (k *Kernel) RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []netlink.Route
	for _, r := range k.routes {
		if dst := dstOf(&r); family != netlink.FAMILY_ALL && dst.IsValid() && dst.Addr().Is4() != (family == netlink.FAMILY_V4) {
			continue
		}
		if filterMask&netlink.RT_FILTER_PROTOCOL != 0 && r.Protocol != filter.Protocol {
			continue
		}
		if filterMask&netlink.RT_FILTER_TABLE != 0 && r.Table != filter.Table {
			continue
		}
		if filterMask&netlink.RT_FILTER_DST != 0 && dstOf(&r) != dstOf(filter) {
			continue
		}
		if filterMask&netlink.RT_FILTER_TYPE != 0 && r.Type != filter.Type {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func dstOf(r *netlink.Route) netip.Prefix {
	p, _ := netkernel.Prefix(r.Dst)
	return p
}

// sameRoute is the kernel's identity of a route: destination, table and
// metric.
func sameRoute(a, b *netlink.Route) bool {
	table := func(r *netlink.Route) int {
		if r.Table == 0 {
			return unix.RT_TABLE_MAIN
		}
		return r.Table
	}
	return dstOf(a) == dstOf(b) && table(a) == table(b) && a.Priority == b.Priority
}

// HopEach calls f with weft's routes of family in the main table, as
// Hops.
func (k *Kernel) HopEach(family int, f func(netip.Prefix, netkernel.Hop)) error {
	routes, err := k.RouteListFiltered(family, &netlink.Route{Protocol: netkernel.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	k.mu.Lock()
	hops := make([]netkernel.Hop, len(routes))
	for i, r := range routes {
		hops[i] = netkernel.Hop{Link: r.LinkIndex, Gw: netkernel.Addr(r.Gw), NH: k.routeNexthop[dstOf(&r)]}
	}
	k.mu.Unlock()
	for i, r := range routes {
		f(dstOf(&r), hops[i])
	}
	return err
}

// RouteReplaceNexthop sets weft's route to dst through nexthop object id,
// which must exist (EINVAL otherwise, as the kernel says "Nexthop id does
// not exist").
func (k *Kernel) RouteReplaceNexthop(dst netip.Prefix, id uint32) error {
	k.mu.Lock()
	nh, ok := k.nexthops[id]
	k.mu.Unlock()
	if !ok {
		return unix.EINVAL
	}
	r := netlink.Route{Dst: netkernel.IPNet(dst), LinkIndex: nh.Link, Gw: nh.Gw.AsSlice(), Protocol: netkernel.RouteProtocol, Table: unix.RT_TABLE_MAIN}
	if nh.OnLink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	if err := k.RouteReplace(&r); err != nil {
		return err
	}
	k.mu.Lock()
	k.routeNexthop[dst] = id
	k.mu.Unlock()
	return nil
}

// NexthopEach calls f with every nexthop object.
func (k *Kernel) NexthopEach(f func(netkernel.Nexthop)) error {
	if k.NoNexthops {
		return unix.EOPNOTSUPP
	}
	k.mu.Lock()
	all := make([]netkernel.Nexthop, 0, len(k.nexthops))
	for _, nh := range k.nexthops {
		all = append(all, nh)
	}
	k.mu.Unlock()
	for _, nh := range all {
		f(nh)
	}
	return nil
}

// NexthopSet creates a nexthop object (EEXIST when its ID is taken) or,
// with replace, creates or replaces it; its link must exist. A replaced
// object's routes follow it.
func (k *Kernel) NexthopSet(nh netkernel.Nexthop, replace bool) error {
	if k.NoNexthops {
		return unix.EOPNOTSUPP
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.byIndex(nh.Link); !ok {
		return unix.ENODEV
	}
	if _, taken := k.nexthops[nh.ID]; taken && !replace {
		return unix.EEXIST
	}
	if err := k.write("nexthop set %d", nh.ID); err != nil {
		return err
	}
	k.nexthops[nh.ID] = nh
	for i := range k.routes {
		if k.routeNexthop[dstOf(&k.routes[i])] == nh.ID {
			k.routes[i].LinkIndex, k.routes[i].Gw = nh.Link, nh.Gw.AsSlice()
		}
	}
	return nil
}

// NexthopDel removes a nexthop object and the routes through it; ENOENT
// when there is none.
func (k *Kernel) NexthopDel(id uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.nexthops[id]; !ok {
		return unix.ENOENT
	}
	if err := k.write("nexthop del %d", id); err != nil {
		return err
	}
	delete(k.nexthops, id)
	k.routes = slices.DeleteFunc(k.routes, func(r netlink.Route) bool { return k.routeNexthop[dstOf(&r)] == id })
	k.pruneRouteNexthops()
	return nil
}

// RouteReplace adds a route or replaces the one to the same destination
// and metric; the link must exist unless the route is a blackhole.
func (k *Kernel) RouteReplace(route *netlink.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.byIndex(route.LinkIndex); !ok && route.Type != unix.RTN_BLACKHOLE {
		return unix.ENODEV
	}
	dst := dstOf(route)
	if err := k.write("route replace %s", dst); err != nil {
		return err
	}
	r := *route
	if r.Table == 0 {
		r.Table = unix.RT_TABLE_MAIN
	}
	k.routes = slices.DeleteFunc(k.routes, func(have netlink.Route) bool { return sameRoute(&have, &r) })
	k.routes = append(k.routes, r)
	delete(k.routeNexthop, dst)
	return nil
}

// RouteDel removes the route to route's destination; ESRCH when none.
func (k *Kernel) RouteDel(route *netlink.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	dst := dstOf(route)
	i := slices.IndexFunc(k.routes, func(have netlink.Route) bool { return sameRoute(&have, route) })
	if i < 0 {
		return unix.ESRCH
	}
	if err := k.write("route del %s", dst); err != nil {
		return err
	}
	k.routes = slices.Delete(k.routes, i, i+1)
	k.pruneRouteNexthops()
	return nil
}

// NeighEach calls f with a link's neighbours (FAMILY_V4) or FDB entries
// (AF_BRIDGE). While InterruptDumps is above zero, a dump is cut short
// after its first entry with ErrDumpInterrupted, as the kernel does when
// the table changes under it, and the count goes down.
func (k *Kernel) NeighEach(linkIndex, family int, f func(netkernel.Neighbour)) error {
	k.mu.Lock()
	var out []netlink.Neigh
	for _, n := range k.neighs {
		if n.LinkIndex == linkIndex && n.Family == family {
			out = append(out, n)
		}
	}
	interrupt := k.InterruptDumps > 0 && len(out) > 1
	if interrupt {
		k.InterruptDumps--
		out = out[:1]
	}
	k.mu.Unlock()
	for _, n := range out {
		e := netkernel.Neighbour{Link: n.LinkIndex, IP: netkernel.Addr(n.IP)}
		if len(n.HardwareAddr) == len(e.MAC) {
			copy(e.MAC[:], n.HardwareAddr)
			e.HasMAC = true
		}
		f(e)
	}
	if interrupt {
		return netlink.ErrDumpInterrupted
	}
	return nil
}

// sameNeigh is the kernel's identity of an entry: the IP for a neighbour,
// the MAC for an FDB entry of a vxlan device (NeighSet replaces its dst).
func sameNeigh(a, b netlink.Neigh) bool {
	if a.LinkIndex != b.LinkIndex || a.Family != b.Family {
		return false
	}
	if a.Family == unix.AF_BRIDGE {
		return a.HardwareAddr.String() == b.HardwareAddr.String()
	}
	return a.IP.Equal(b.IP)
}

// NeighSet adds or replaces a neighbour or FDB entry.
func (k *Kernel) NeighSet(neigh *netlink.Neigh) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.byIndex(neigh.LinkIndex); !ok {
		return unix.ENODEV
	}
	if err := k.write("neigh set %s %s", neigh.IP, neigh.HardwareAddr); err != nil {
		return err
	}
	k.neighs = slices.DeleteFunc(k.neighs, func(have netlink.Neigh) bool { return sameNeigh(have, *neigh) })
	k.neighs = append(k.neighs, *neigh)
	return nil
}

// NeighDel removes a neighbour or FDB entry; ENOENT when none.
func (k *Kernel) NeighDel(neigh *netlink.Neigh) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	i := slices.IndexFunc(k.neighs, func(have netlink.Neigh) bool { return sameNeigh(have, *neigh) })
	if i < 0 {
		return unix.ENOENT
	}
	if err := k.write("neigh del %s %s", neigh.IP, neigh.HardwareAddr); err != nil {
		return err
	}
	k.neighs = slices.Delete(k.neighs, i, i+1)
	return nil
}

// DeleteRoute removes a route by hand (drift), as `ip route del dst` would.
func (k *Kernel) DeleteRoute(dst string) error {
	return k.RouteDel(&netlink.Route{Dst: netkernel.IPNet(netip.MustParsePrefix(dst))})
}

// State prints everything, sorted, one object a line:
//
//	link weft.1 vxlan mtu 1450 up
//	addr 10.5.1.0/32 dev weft.1
//	route 10.5.2.0/24 nhid 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
//	nexthop id 168100352 via 10.5.2.0 dev weft.1 proto 87 onlink
//	neigh 10.5.2.0 dev weft.1 lladdr 02:00:00:00:00:02 PERMANENT
//	fdb 02:00:00:00:00:02 dev weft.1 dst 192.168.77.2 self permanent
func (k *Kernel) State() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	name := func(idx int) string {
		if l, ok := k.byIndex(idx); ok {
			return l.Attrs().Name
		}
		return fmt.Sprintf("if%d", idx)
	}
	var lines []string
	for _, l := range k.links {
		up := "down"
		if l.Attrs().Flags&net.FlagUp != 0 {
			up = "up"
		}
		lines = append(lines, fmt.Sprintf("link %s %s mtu %d %s", l.Attrs().Name, l.Type(), l.Attrs().MTU, up))
		for _, p := range k.addrs[l.Attrs().Index] {
			lines = append(lines, fmt.Sprintf("addr %s dev %s", p, l.Attrs().Name))
		}
	}
	for _, r := range k.routes {
		line := "route " + dstOf(&r).String()
		if r.Type == unix.RTN_BLACKHOLE {
			lines = append(lines, fmt.Sprintf("route blackhole %s metric %d", dstOf(&r), r.Priority))
			continue
		}
		if id, ok := k.routeNexthop[dstOf(&r)]; ok {
			line += fmt.Sprintf(" nhid %d", id)
		}
		if r.Gw != nil {
			line += " via " + r.Gw.String()
		}
		line += " dev " + name(r.LinkIndex)
		if r.Protocol != 0 {
			line += fmt.Sprintf(" proto %d", r.Protocol)
		}
		if r.Scope == netlink.SCOPE_LINK {
			line += " scope link"
		}
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			line += " onlink"
		}
		lines = append(lines, line)
	}
	for _, nh := range k.nexthops {
		line := fmt.Sprintf("nexthop id %d via %s dev %s proto %d", nh.ID, nh.Gw, name(nh.Link), nh.Protocol)
		if nh.OnLink {
			line += " onlink"
		}
		lines = append(lines, line)
	}
	for _, n := range k.neighs {
		if n.Family == unix.AF_BRIDGE {
			lines = append(lines, fmt.Sprintf("fdb %s dev %s dst %s self permanent", n.HardwareAddr, name(n.LinkIndex), n.IP))
		} else {
			lines = append(lines, fmt.Sprintf("neigh %s dev %s lladdr %s PERMANENT", n.IP, name(n.LinkIndex), n.HardwareAddr))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}
