package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/lease"
)

// checkContainer checks the container of args against this host's subnet
// file and what ADD gave it: every address ADD's result gave it is in one
// of this host's subnets; its interface has the MTU ADD set; it has a
// route to each Network. Each difference is named.
func checkContainer(args *skel.CmdArgs, prev types.Result, env lease.SubnetEnv, mtu int) error {
	result, err := types100.NewResultFromResult(prev)
	if err != nil {
		return fmt.Errorf("the ADD's result: %w", err)
	}
	var problems []string
	for _, ip := range result.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		if !env.Subnet.Contains(addr) && !env.IPv6Subnet.Contains(addr) {
			problems = append(problems, fmt.Sprintf("its address %s is not in this host's subnet %s (the host's subnet changed: "+
				"restart the container)", addr, joinSubnets(env)))
		}
	}
	handle, err := netlinkIn(args.Netns)
	if err != nil {
		return err
	}
	defer handle.Close()
	link, err := handle.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("the container's %s: %w", args.IfName, err)
	}
	if mtu > 0 && link.Attrs().MTU != mtu {
		problems = append(problems, fmt.Sprintf("%s has MTU %d, ADD set %d", args.IfName, link.Attrs().MTU, mtu))
	}
	routes, err := handle.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("the container's routes: %w", err)
	}
	for _, nw := range []netip.Prefix{env.Network, env.IPv6Network} {
		if !nw.IsValid() || nw.Addr().Is4() && !env.Subnet.IsValid() {
			continue
		}
		if !hasRoute(routes, nw) {
			problems = append(problems, fmt.Sprintf("no route to the Network %s on %s", nw, args.IfName))
		}
	}
	if len(problems) > 0 {
		return errors.New("container " + args.ContainerID + ": " + strings.Join(problems, "; "))
	}
	return nil
}

// hasRoute reports whether routes hold one to exactly nw.
func hasRoute(routes []netlink.Route, nw netip.Prefix) bool {
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok && netip.PrefixFrom(a.Unmap(), ones) == nw {
			return true
		}
	}
	return false
}

// netlinkIn is a netlink handle in the network namespace at path.
func netlinkIn(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("the container's network namespace %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

// joinSubnets is this host's subnets, comma-separated.
func joinSubnets(env lease.SubnetEnv) string {
	var out []string
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			out = append(out, sn.String())
		}
	}
	return strings.Join(out, ",")
}
