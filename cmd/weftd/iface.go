package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/cmd/internal/host"
)

// hostInterface is one interface as the external-interface choice sees
// it: its name, index, MTU and global IPv4 and IPv6 addresses (with their
// networks).
type hostInterface struct {
	Name       string
	Index, MTU int
	Addrs      []netip.Prefix
	Addrs6     []netip.Prefix
}

// routeLookup says which interface and source address a packet to ip
// would leave by (`ip route get`).
type routeLookup func(ip netip.Addr) (index int, src netip.Addr, err error)

// chosen is the outcome of the choice: the interface, the address on it
// that is used, and why, for the log. addr6 is set when the choice named
// one of the interface's IPv6 addresses (-iface <IPv6>, -iface-regex).
type chosen struct {
	iface hostInterface
	addr  netip.Addr
	addr6 netip.Addr
	why   string
}

// pickExternal chooses the interface and address for inter-host traffic as
// flannel does (main.go, pkg/ipmatch): each -iface in turn (a name, or an
// IP naming the interface that holds it), then each -iface-regex (matched
// against every interface's IPv4 addresses first, then its IPv6 ones, then
// names; a matched address is the one used), then -iface-can-reach (the route's interface and source
// address), each falling through to the next when it matches nothing. With
// none of them, the interface holding -public-ip, else the default
// route's. The address is the interface's first unless the match named one.
func pickExternal(o *options, ifaces []hostInterface, defaultIndex int, route routeLookup) (chosen, error) {
	host := interfaces(ifaces)
	var tried []string
	for _, spec := range o.ifaces {
		if c, ok, err := host.bySpec(spec); ok {
			return c, err
		}
		tried = append(tried, "-iface "+spec)
	}
	for _, expr := range o.ifaceRegex {
		re, err := regexp.Compile(expr)
		if err != nil {
			return chosen{}, fmt.Errorf("-iface-regex %q: %w", expr, err)
		}
		if c, ok, err := host.byRegex(re, expr); ok {
			return c, err
		}
		tried = append(tried, "-iface-regex "+expr)
	}
	if o.ifaceCanReach != "" {
		target, err := netip.ParseAddr(o.ifaceCanReach)
		if err != nil {
			return chosen{}, fmt.Errorf("-iface-can-reach %q is not an IP address", o.ifaceCanReach)
		}
		if idx, src, err := route(target); err == nil {
			if i, ok := host.byIndex(idx); ok {
				why := "route to -iface-can-reach " + o.ifaceCanReach
				if src.IsValid() {
					return chosen{iface: i, addr: src, why: why}, nil
				}
				return first(i, why)
			}
		}
		tried = append(tried, "-iface-can-reach "+o.ifaceCanReach)
	}
	if len(tried) > 0 {
		var have []string
		for _, i := range ifaces {
			have = append(have, fmt.Sprintf("%s:%v", i.Name, i.Addrs))
		}
		return chosen{}, fmt.Errorf("no interface matches %s (interfaces: %s)", strings.Join(tried, ", "),
			strings.Join(have, " "))
	}
	if o.publicIP != "" {
		if ip, err := netip.ParseAddr(o.publicIP); err == nil {
			if i, ok := host.holding(ip); ok {
				return chosen{iface: i, addr: ip, why: "it holds -public-ip " + o.publicIP}, nil
			}
		}
	}
	i, ok := host.byIndex(defaultIndex)
	if !ok {
		return chosen{}, errors.New("no default route to pick the external interface from; set -iface, -iface-regex or " +
			"-iface-can-reach")
	}
	return first(i, "default route")
}

// interfaces are this host's interfaces, for pickExternal's lookups.
type interfaces []hostInterface

// byIndex is the interface with index idx.
func (is interfaces) byIndex(idx int) (hostInterface, bool) {
	for _, i := range is {
		if i.Index == idx {
			return i, true
		}
	}
	return hostInterface{}, false
}

// holding is the interface that holds IPv4 address ip.
func (is interfaces) holding(ip netip.Addr) (hostInterface, bool) {
	for _, i := range is {
		for _, a := range i.Addrs {
			if a.Addr() == ip {
				return i, true
			}
		}
	}
	return hostInterface{}, false
}

// bySpec is the interface one -iface value names: an IPv6 address it
// holds (which becomes the PublicIPv6), an IPv4 address it holds, or its
// name; ok says whether one matched.
func (is interfaces) bySpec(spec string) (c chosen, ok bool, err error) {
	ip, perr := netip.ParseAddr(spec)
	switch {
	case perr == nil && ip.Is6():
		for _, i := range is {
			for _, a := range i.Addrs6 {
				if a.Addr() == ip {
					c, err := first(i, "-iface "+spec)
					c.addr6 = ip
					return c, true, err
				}
			}
		}
	case perr == nil:
		if i, found := is.holding(ip); found {
			return chosen{iface: i, addr: ip, why: "-iface " + spec}, true, nil
		}
	default:
		for _, i := range is {
			if i.Name == spec {
				c, err := first(i, "-iface "+spec)
				return c, true, err
			}
		}
	}
	return chosen{}, false, nil
}

// byRegex is the interface one -iface-regex matches, as flannel matches
// it: an IPv4 address, then an IPv6 address (the PublicIPv6), then a name;
// ok says whether one matched.
func (is interfaces) byRegex(re *regexp.Regexp, expr string) (c chosen, ok bool, err error) {
	for _, i := range is {
		for _, a := range i.Addrs {
			if re.MatchString(a.Addr().String()) {
				return chosen{iface: i, addr: a.Addr(), why: "-iface-regex " + expr + " matched an address"}, true, nil
			}
		}
	}
	for _, i := range is {
		for _, a := range i.Addrs6 {
			if re.MatchString(a.Addr().String()) {
				c, err := first(i, "-iface-regex "+expr+" matched an IPv6 address")
				c.addr6 = a.Addr()
				return c, true, err
			}
		}
	}
	for _, i := range is {
		if re.MatchString(i.Name) {
			c, err := first(i, "-iface-regex "+expr+" matched the name")
			return c, true, err
		}
	}
	return chosen{}, false, nil
}

// first chooses interface i with its first global address, for why.
func first(i hostInterface, why string) (chosen, error) {
	switch {
	case len(i.Addrs) > 0:
		return chosen{iface: i, addr: i.Addrs[0].Addr(), why: why}, nil
	case len(i.Addrs6) > 0:
		// Enough for an IPv6-only network; weftd refuses it for one
		// with IPv4 once it has read the config.
		return chosen{iface: i, why: why}, nil
	}
	return chosen{}, fmt.Errorf("interface %s (%s) has no global IPv4 or IPv6 address; give it one or pick another "+
		"with -iface", i.Name, why)
}

// chooseExternal picks the interface and address for inter-host traffic
// (pickExternal, on this host's interfaces and routes) and the public IP,
// and logs what it chose and why, and any device flanneld left.
func chooseExternal(o *options, log *slog.Logger) (underlay.ExternalInterface, netip.Addr, error) {
	ifaces, defaultIndex, err := hostInterfaces()
	if err != nil {
		return underlay.ExternalInterface{}, netip.Addr{}, err
	}
	warnFlannelLeftovers(ifaces, log)
	c, err := pickExternal(o, ifaces, defaultIndex, routeTo)
	if err != nil {
		return underlay.ExternalInterface{}, netip.Addr{}, err
	}
	ext := underlay.ExternalInterface{Name: c.iface.Name, Index: c.iface.Index, MTU: c.iface.MTU, Addr: c.addr,
		AddrIPv6: c.addr6}
	for _, a := range c.iface.Addrs {
		ext.Prefixes = append(ext.Prefixes, a.Masked())
	}
	for _, a := range c.iface.Addrs6 {
		ext.Prefixes = append(ext.Prefixes, a.Masked())
		if !ext.AddrIPv6.IsValid() {
			ext.AddrIPv6 = a.Addr()
		}
	}
	if len(c.iface.Addrs) > 1 && c.addr.IsValid() {
		log.Info("interface has several addresses; using this one (pick another with -iface <IP> or -public-ip)",
			"iface", ext.Name, "addresses", c.iface.Addrs, "chosen", ext.Addr)
	}
	public := ext.Addr
	if o.publicIP != "" {
		public, err = netip.ParseAddr(o.publicIP)
		if err != nil || !public.Is4() {
			return ext, netip.Addr{}, fmt.Errorf("-public-ip %q is not an IPv4 address", o.publicIP)
		}
	}
	log.Info("external interface chosen", "iface", ext.Name, "addr", ext.Addr, "public_ip", public, "mtu", ext.MTU,
		"why", c.why)
	return ext, public, nil
}

// publicIPv6 is the address this host publishes as PublicIPv6 on a
// dual-stack network: -public-ipv6, else the external interface's first
// global IPv6 address (or the one -iface named), as flannel picks it.
func publicIPv6(o *options, ext underlay.ExternalInterface) (netip.Addr, error) {
	if o.publicIPv6 != "" {
		return netip.ParseAddr(o.publicIPv6) // checked by parseFlags
	}
	if !ext.AddrIPv6.IsValid() {
		return netip.Addr{}, fmt.Errorf(`the network config has "EnableIPv6": true but interface %s has no global IPv6 `+
			`address; give it one, pick another interface with -iface, or set -public-ipv6`, ext.Name)
	}
	return ext.AddrIPv6, nil
}

// hostInterfaces lists this host's interfaces in index order with their
// global IPv4 and IPv6 addresses, and the default route's interface (0:
// none).
func hostInterfaces() ([]hostInterface, int, error) {
	links, err := netkernel.Retry(netlink.LinkList)
	if err != nil {
		return nil, 0, fmt.Errorf("listing interfaces: %w", err)
	}
	sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
	var out []hostInterface
	for _, l := range links {
		i := hostInterface{Name: l.Attrs().Name, Index: l.Attrs().Index, MTU: l.Attrs().MTU}
		addrs, err := netkernel.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V4) })
		if err != nil {
			return nil, 0, fmt.Errorf("listing addresses of %s: %w", i.Name, err)
		}
		i.Addrs = usableAddrs(addrs)
		addrs6, err := netkernel.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V6) })
		if err != nil {
			return nil, 0, fmt.Errorf("listing IPv6 addresses of %s: %w", i.Name, err)
		}
		i.Addrs6 = usableAddrs(addrs6)
		out = append(out, i)
	}
	// The IPv4 default route's interface; an IPv6-only host's IPv6 one.
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		link, err := defaultRouteLink(family)
		if err != nil {
			return nil, 0, fmt.Errorf("listing routes: %w", err)
		}
		if link > 0 {
			return out, link, nil
		}
	}
	return out, 0, nil
}

// defaultRouteLink is the interface of family's default route with the
// lowest metric in the main table (0: none). It reads the routes one at a
// time, keeping none: this runs whenever an address or link changes, and
// a host with a route per peer (50,000 at scale) held about 12 MB of
// them at once each time.
func defaultRouteLink(family int) (int, error) {
	return netkernel.Retry(func() (int, error) {
		best, bestPriority := 0, 0
		err := netlink.RouteListFilteredIter(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE,
			func(r netlink.Route) bool {
				if dst, _ := netkernel.Prefix(r.Dst); (r.Dst == nil || dst.Bits() == 0) && r.LinkIndex > 0 &&
					(best == 0 || r.Priority < bestPriority) {
					best, bestPriority = r.LinkIndex, r.Priority
				}
				return true
			})
		return best, err
	})
}

// usableAddrs are an interface's global addresses of one family in the
// order they are preferred, by their kernel flags as flannel v0.28 orders
// them: a deprecated address (its preferred lifetime over: being
// renumbered away) is left out; addresses set by hand (permanent) come
// before ones from DHCP or SLAAC, and non-temporary before IPv6 privacy
// addresses (which rotate) and IPv4 secondary ones (the kernel shares one
// flag between the two). Otherwise the kernel's order stays (flannel's
// sort is not stable; weft's is, so a choice does not flap).
func usableAddrs(addrs []netlink.Addr) []netip.Prefix {
	usable := make([]netlink.Addr, 0, len(addrs))
	for _, a := range addrs {
		p, ok := netkernel.Prefix(a.IPNet)
		if ok && a.Scope == unix.RT_SCOPE_UNIVERSE && !p.Addr().IsLinkLocalUnicast() && a.Flags&unix.IFA_F_DEPRECATED == 0 {
			usable = append(usable, a)
		}
	}
	rank := func(a netlink.Addr) int {
		r := 0
		if a.Flags&unix.IFA_F_PERMANENT == 0 {
			r += 2
		}
		if a.Flags&unix.IFA_F_TEMPORARY != 0 {
			r++
		}
		return r
	}
	slices.SortStableFunc(usable, func(a, b netlink.Addr) int { return rank(a) - rank(b) })
	out := make([]netip.Prefix, 0, len(usable))
	for _, a := range usable {
		p, _ := netkernel.Prefix(a.IPNet)
		out = append(out, p)
	}
	return out
}

// routeTo is `ip route get ip`: the interface and source address.
func routeTo(ip netip.Addr) (int, netip.Addr, error) {
	routes, err := netlink.RouteGet(ip.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0, netip.Addr{}, fmt.Errorf("no route to %s: %v", ip, err)
	}
	return routes[0].LinkIndex, netkernel.Addr(routes[0].Src), nil
}

// warnFlannelLeftovers names the devices flanneld left on a host moving
// from flannel: one of the same VNI and port keeps weft's from being made.
func warnFlannelLeftovers(ifaces []hostInterface, log *slog.Logger) {
	names := make([]string, 0, len(ifaces))
	for _, i := range ifaces {
		names = append(names, i.Name)
	}
	if left := host.FlannelLinks(names); len(left) > 0 {
		log.Warn("flanneld left devices on this host; stop flanneld and remove them with `weftctl cleanup --flannel` "+
			"(the subnet file stays, so this host keeps its subnet)",
			"devices", left)
	}
}
