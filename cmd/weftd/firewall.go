package main

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/lease"
)

// keepFirewall starts weft's firewall (firewall.Keep) with -ip-masq's and
// -iptables-forward-rules' settings, for each family of the lease, and the
// MSS clamp when clampMTU is set.
func keepFirewall(ctx context.Context, g *errgroup.Group, o *options, cfg *lease.Config, holder *lease.Holder,
	overlay []string, clampMTU int,
	obs *observer, log *slog.Logger) error {
	var families []firewall.Family
	if cfg.EnableIPv4 {
		families = append(families,
			firewall.Family{Network: cfg.Network, Subnet: func() netip.Prefix { return holder.Current().Subnet }})
	}
	if cfg.EnableIPv6 {
		families = append(families,
			firewall.Family{IPv6: true, Network: cfg.IPv6Network,
				Subnet: func() netip.Prefix { return holder.Current().IPv6Subnet }})
	}
	settings := firewall.Settings{Masq: o.ipMasq, Forward: o.forwardRules, RandomFullyDisable: o.randomFullyDisable,
		Resync: time.Duration(o.iptablesSync) * time.Second, PeersNetwork: cfg.PeersNetwork, Overlay: overlay,
		Strict: cfg.StrictEncryption, ClampMTU: clampMTU}
	kept, err := firewall.Keep(ctx, g, cfg.EnableNFTables, settings, families, log)
	if kept {
		obs.setFirewall(o.ipMasq, o.forwardRules, cfg.StrictEncryption, cfg.EnableNFTables)
	}
	if cfg.StrictEncryption && err == nil {
		log.Info("strict encryption: packets to other hosts' subnets leave through WireGuard or not at all", "chain",
			firewall.StrictChain)
	}
	return err
}

// clampMTU is the MTU TCP through WireGuard is clamped to: the backend's
// own, while its device carries a larger one (backends.CarriedMTU); else 0.
func clampMTU(backend backends.Backend) int {
	if _, ok := backends.CarriedMTU(backend); ok {
		return backend.MTU()
	}
	return 0
}
