package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netutil"
)

// chooseExternal picks the interface and address for inter-host traffic, in
// flannel's order: -iface, -iface-regex, -iface-can-reach, else the
// default route's interface. It logs what it chose and why.
func chooseExternal(o *options, log *slog.Logger) (netutil.ExternalInterface, netip.Addr, error) {
	link, why, err := pickLink(o)
	if err != nil {
		return netutil.ExternalInterface{}, netip.Addr{}, err
	}
	addrs, err := netutil.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return netutil.ExternalInterface{}, netip.Addr{}, fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	ext := netutil.ExternalInterface{Name: link.Attrs().Name, Index: link.Attrs().Index, MTU: link.Attrs().MTU}
	var global []netip.Addr
	for _, a := range addrs {
		p, ok := netutil.Prefix(a.IPNet)
		if !ok {
			continue
		}
		ext.Prefixes = append(ext.Prefixes, p.Masked())
		if a.Scope == unix.RT_SCOPE_UNIVERSE {
			global = append(global, p.Addr())
		}
	}
	if len(global) == 0 {
		return ext, netip.Addr{}, fmt.Errorf("interface %s (%s) has no global IPv4 address; give it one or pick another with -iface", ext.Name, why)
	}
	ext.Addr = global[0]
	if want, ok := preferredAddr(o); ok {
		for _, a := range global {
			if a == want {
				ext.Addr = a
			}
		}
	}
	if len(global) > 1 {
		log.Info("interface has several addresses; using the first (pick one with -iface <IP> or -public-ip)",
			"iface", ext.Name, "addresses", global, "chosen", ext.Addr)
	}
	public := ext.Addr
	if o.publicIP != "" {
		public, err = netip.ParseAddr(o.publicIP)
		if err != nil || !public.Is4() {
			return ext, netip.Addr{}, fmt.Errorf("-public-ip %q is not an IPv4 address", o.publicIP)
		}
	}
	log.Info("external interface chosen", "iface", ext.Name, "addr", ext.Addr, "public_ip", public, "mtu", ext.MTU, "why", why)
	return ext, public, nil
}

// preferredAddr is the address named by -iface <IP>, if any.
func preferredAddr(o *options) (netip.Addr, bool) {
	for _, s := range o.ifaces {
		if a, err := netip.ParseAddr(s); err == nil {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func pickLink(o *options) (netlink.Link, string, error) {
	links, err := netutil.Retry(netlink.LinkList)
	if err != nil {
		return nil, "", fmt.Errorf("listing interfaces: %w", err)
	}
	for _, spec := range o.ifaces {
		if ip, err := netip.ParseAddr(spec); err == nil {
			if l := linkWithAddr(links, func(a netip.Addr) bool { return a == ip }); l != nil {
				return l, "-iface " + spec, nil
			}
			continue
		}
		if l, err := netlink.LinkByName(spec); err == nil {
			return l, "-iface " + spec, nil
		}
	}
	if len(o.ifaces) > 0 {
		return nil, "", fmt.Errorf("none of -iface %v exists on this host (by name or address)", o.ifaces)
	}
	for _, expr := range o.ifaceRegex {
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, "", fmt.Errorf("-iface-regex %q: %w", expr, err)
		}
		sort.Slice(links, func(i, j int) bool { return links[i].Attrs().Index < links[j].Attrs().Index })
		for _, l := range links {
			if re.MatchString(l.Attrs().Name) {
				return l, "-iface-regex " + expr + " matched the name", nil
			}
		}
		if l := linkWithAddr(links, func(a netip.Addr) bool { return re.MatchString(a.String()) }); l != nil {
			return l, "-iface-regex " + expr + " matched an address", nil
		}
	}
	if len(o.ifaceRegex) > 0 {
		return nil, "", fmt.Errorf("no interface name or address matches -iface-regex %v", o.ifaceRegex)
	}
	if o.ifaceCanReach != "" {
		ip := net.ParseIP(o.ifaceCanReach)
		if ip == nil {
			return nil, "", fmt.Errorf("-iface-can-reach %q is not an IP address", o.ifaceCanReach)
		}
		routes, err := netlink.RouteGet(ip)
		if err != nil || len(routes) == 0 {
			return nil, "", fmt.Errorf("-iface-can-reach %s: no route to it: %v", ip, err)
		}
		l, err := netlink.LinkByIndex(routes[0].LinkIndex)
		return l, "route to -iface-can-reach " + o.ifaceCanReach, err
	}
	routes, err := netutil.Retry(func() ([]netlink.Route, error) { return netlink.RouteList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return nil, "", fmt.Errorf("listing routes: %w", err)
	}
	var best *netlink.Route
	for i, r := range routes {
		if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.LinkIndex > 0 && (best == nil || r.Priority < best.Priority) {
			best = &routes[i]
		}
	}
	if best == nil {
		return nil, "", errors.New("no default route to pick the external interface from; set -iface, -iface-regex or -iface-can-reach")
	}
	l, err := netlink.LinkByIndex(best.LinkIndex)
	return l, "default route", err
}

func linkWithAddr(links []netlink.Link, match func(netip.Addr) bool) netlink.Link {
	for _, l := range links {
		addrs, err := netutil.Retry(func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_V4) })
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if match(netutil.Addr(a.IP)) {
				return l
			}
		}
	}
	return nil
}
