package netkernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// EnsureTunnelLink gives a layer-3 tunnel device (WireGuard, the udp TUN)
// what weft wants on it: the MTU, this host's subnet address as a /32 (so
// host-originated traffic has a source peers route back) and nothing else,
// the device up, and one route for the whole Network through it. It fixes
// only what differs and returns every error met.
func EnsureTunnelLink(k Kernel, name string, mtu int, self netip.Prefix, network netip.Prefix) []error {
	return EnsureTunnelLinkFor(k, name, mtu, []TunnelHalf{{Self: self, Network: network}})
}

// TunnelHalf is one address family a tunnel device carries: this host's
// subnet in it and the Network (or IPv6Network) it routes; Self is invalid
// for a network that is only routed (outside peers' PeersNetwork).
type TunnelHalf struct {
	Self, Network netip.Prefix
}

// EnsureTunnelLinkFor is EnsureTunnelLink for a device that carries
// several families (one WireGuard device for a dual-stack network): an
// address of each half's subnet (/32 or /128) and a route for each half's
// Network; any other weft route on the device is removed.
func EnsureTunnelLinkFor(k Kernel, name string, mtu int, halves []TunnelHalf) []error {
	link, err := k.LinkByName(name)
	if err != nil {
		return []error{fmt.Errorf("finding %s: %w", name, err)}
	}
	var errs []error
	if link.Attrs().MTU != mtu {
		if err := k.LinkSetMTU(link, mtu); err != nil {
			errs = append(errs, fmt.Errorf("setting MTU of %s: %w", name, err))
		}
	}
	wanted := map[netip.Prefix]bool{}
	for _, h := range halves {
		if h.Self.IsValid() { // a half without one only routes (outside peers' network)
			errs = append(errs, EnsureOnlyAddress(k, link, netip.PrefixFrom(h.Self.Addr(), h.Self.Addr().BitLen()))...)
		}
		wanted[h.Network] = true
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := k.LinkSetUp(link); err != nil {
			errs = append(errs, fmt.Errorf("bringing %s up: %w", name, err))
		}
	}
	owned, err := OwnedRoutes(k)
	if err != nil {
		return append(errs, err)
	}
	have := map[netip.Prefix]bool{}
	for _, r := range owned {
		if r.LinkIndex != link.Attrs().Index {
			continue
		}
		if dst, _ := Prefix(r.Dst); wanted[dst] {
			have[dst] = true
		} else if err := k.RouteDel(&r); err != nil {
			errs = append(errs, fmt.Errorf("removing route %s for an older Network: %w", dst, err))
		}
	}
	for _, h := range halves {
		if have[h.Network] || !h.Network.IsValid() {
			continue
		}
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: IPNet(h.Network), Protocol: RouteProtocol,
			Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK}
		if err := k.RouteReplace(route); err != nil {
			errs = append(errs, fmt.Errorf("route %s dev %s: %w", h.Network, name, err))
		}
	}
	return errs
}

// EnsureOnlyAddress makes want the link's only address of want's family:
// stale ones (an older subnet's) are removed, want is added when missing.
// Every device weft owns carries exactly its subnet's address this way.
// IPv6 link-local addresses are the kernel's and stay.
func EnsureOnlyAddress(k Kernel, link netlink.Link, want netip.Prefix) []error {
	name := link.Attrs().Name
	family := netlink.FAMILY_V4
	if want.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := k.AddrList(link, family)
	if err != nil {
		return []error{fmt.Errorf("listing addresses of %s: %w", name, err)}
	}
	var errs []error
	found := false
	for _, a := range addrs {
		if p, _ := Prefix(a.IPNet); p == want {
			found = true
		} else if p.Addr().IsLinkLocalUnicast() {
			continue
		} else if err := k.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("removing stale address %s from %s: %w", a.IPNet, name, err))
		}
	}
	if !found {
		if err := k.AddrAdd(link, &netlink.Addr{IPNet: IPNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding %s to %s: %w", want, name, err))
		}
	}
	return errs
}

// SetTUNPersist sets TUNSETPERSIST so the interface, its addresses and
// routes outlive this process: a restarted weftd re-attaches and traffic
// resumes where it stopped.
func SetTUNPersist(t tun.Device, on bool) error {
	native, ok := t.(*tun.NativeTun)
	if !ok {
		return errors.New("not a native TUN")
	}
	// File().Fd() would switch the fd to blocking mode under the netpoller;
	// go through the raw conn instead.
	raw, err := native.File().SyscallConn()
	if err != nil {
		return err
	}
	val := 0
	if on {
		val = 1
	}
	var ioErr error
	if err := raw.Control(func(fd uintptr) { ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, val) }); err != nil {
		return err
	}
	return ioErr
}

// DeleteLink removes the named interface; a missing one is not an error.
func DeleteLink(k Kernel, name string) error {
	link, err := k.LinkByName(name)
	if err != nil {
		return nil
	}
	return k.LinkDel(link)
}
