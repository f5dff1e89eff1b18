package host

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends/netkernel"
)

// Keeper keeps what weftd needs of the host itself, beside the backend's
// data path: IP forwarding, and -ip-blackhole-route's routes.
type Keeper struct {
	kernel netkernel.Kernel
	// every is how often the blackhole routes are checked (flannel's
	// iptables resync period).
	every time.Duration
	log   *slog.Logger
}

// NewKeeper keeps the host through kernel, checking every interval.
func NewKeeper(kernel netkernel.Kernel, every time.Duration, log *slog.Logger) *Keeper {
	return &Keeper{kernel: kernel, every: every, log: log}
}

// TurnOnForwarding turns on IP forwarding for IPv4 and, when ipv6, for
// IPv6; without it the kernel drops what the overlay forwards.
func (k *Keeper) TurnOnForwarding(ipv6 bool) {
	if err := enableForwarding("/proc/sys/net/ipv4/ip_forward"); err != nil {
		k.log.Warn("cannot turn on net.ipv4.ip_forward; forwarded traffic will be dropped", "err", err)
	}
	if ipv6 {
		if err := enableForwarding("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			k.log.Warn("cannot turn on net.ipv6.conf.all.forwarding; forwarded IPv6 traffic will be dropped", "err", err)
		}
	}
}

// enableForwarding turns on the forwarding sysctl at path (IPv4's or
// IPv6's), writing only when it is off.
func enableForwarding(path string) error {
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	return os.WriteFile(path, []byte("1\n"), 0o644)
}

// KeepBlackholes keeps, in g, a blackhole route for the lease's subnet of
// each family subnets returns (nil for a family the network lacks), as
// flannel adds one per family.
func (k *Keeper) KeepBlackholes(ctx context.Context, g *errgroup.Group, subnets ...func() netip.Prefix) {
	for _, subnet := range subnets {
		if subnet != nil {
			g.Go(func() error { return k.keepBlackhole(ctx, subnet) })
		}
	}
}

// keepBlackhole keeps the blackhole route for this host's subnet of one
// family, checked every interval as flannel does, and moves it when the
// lease moves to another subnet.
func (k *Keeper) keepBlackhole(ctx context.Context, current func() netip.Prefix) error {
	var previous netip.Prefix
	lastErr := ""
	for {
		// No subnet of this family yet (a lease gaining its IPv6 half):
		// nothing to keep until the next check.
		if subnet := current(); subnet.IsValid() {
			if err := EnsureBlackhole(k.kernel, subnet, previous); err != nil {
				if err.Error() != lastErr {
					k.log.Error("blackhole route; retrying", "subnet", subnet, "err", err)
				}
				lastErr = err.Error()
			} else {
				previous, lastErr = subnet, ""
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(k.every):
		}
	}
}
