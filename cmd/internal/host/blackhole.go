package host

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/weftnet/weft/backends/netkernel"
	"golang.org/x/sys/unix"
)

// BlackholeMetric is the metric of the blackhole route -ip-blackhole-route
// keeps for this host's subnet. flannel adds it at metric 0, where it
// collides with the bridge's own route to the same subnet (docker0, cbr0);
// a high metric lets both exist: the bridge's route wins while the bridge is
// up, and the blackhole keeps the subnet's traffic from leaking out of the
// default route when it is not.
const BlackholeMetric = 4242

// blackhole is the blackhole route for subnet, of its family.
func blackhole(subnet netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: netkernel.IPNet(subnet), Type: unix.RTN_BLACKHOLE, Family: family(subnet),
		Table: unix.RT_TABLE_MAIN, Priority: BlackholeMetric}
}

// family is the netlink address family of a prefix.
func family(p netip.Prefix) int {
	if p.Addr().Is6() {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// EnsureBlackhole adds the blackhole route for subnet (IPv4 or IPv6)
// unless the kernel has it (flannel's -ip-blackhole-route), and removes the
// one of previous (an older lease's subnet; the zero prefix for none).
func EnsureBlackhole(k netkernel.Kernel, subnet, previous netip.Prefix) error {
	if previous.IsValid() && previous != subnet {
		if err := RemoveBlackhole(k, previous); err != nil {
			return err
		}
	}
	want := blackhole(subnet)
	have, err := k.RouteListFiltered(want.Family, want,
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TYPE|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("listing blackhole routes: %w", err)
	}
	if len(have) > 0 {
		return nil
	}
	if err := k.RouteReplace(want); err != nil {
		return fmt.Errorf("blackhole route %s: %w", subnet, err)
	}
	return nil
}

// RemoveBlackhole removes the blackhole route EnsureBlackhole keeps for
// subnet; a missing one is not an error.
func RemoveBlackhole(k netkernel.Kernel, subnet netip.Prefix) error {
	if err := k.RouteDel(blackhole(subnet)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("removing the blackhole route of %s: %w", subnet, err)
	}
	return nil
}
