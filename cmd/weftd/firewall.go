package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/lease"
)

// The firewall keepers weftd runs (iptables or nftables, per family).

// keepFirewall starts keeping weft's iptables chains when -ip-masq or
// -iptables-forward-rules asks for them, and the same chains in ip6tables
// for the IPv6 half of a dual-stack network. Without iptables, -ip-masq is
// an error; forward rules only a warning.
func keepFirewall(ctx context.Context, g *errgroup.Group, o *options, cfg *lease.Config, holder *lease.Holder, overlay []string, obs *observer, log *slog.Logger) error {
	// The other mode's rules go first, as flannel cleans up the traffic
	// manager it does not use at every start: after a switch of
	// "EnableNFTables" nothing of the old mode is left to act twice.
	other, mode := firewall.NFTCleanup, "iptables"
	if cfg.EnableNFTables {
		other, mode = firewall.IPTablesCleanup, "nftables"
	}
	removed, err := other()
	for _, r := range removed {
		log.Info("removed the other firewall mode's rules", "removed", r, "mode", mode)
	}
	if err != nil {
		log.Warn("removing the other firewall mode's rules", "err", err, "mode", mode)
	}
	if !o.ipMasq && !o.forwardRules {
		return nil
	}
	type family struct {
		ipv6    bool
		network netip.Prefix
		subnet  func() netip.Prefix
	}
	peers := cfg.PeersNetwork
	var families []family
	if cfg.EnableIPv4 {
		families = append(families, family{false, cfg.Network, func() netip.Prefix { return holder.Current().Subnet }})
	}
	if cfg.EnableIPv6 {
		families = append(families, family{true, cfg.IPv6Network, func() netip.Prefix { return holder.Current().IPv6Subnet }})
	}
	for _, f := range families {
		settings := firewall.Settings{Masq: o.ipMasq, Forward: o.forwardRules, IPv6: f.ipv6,
			RandomFullyDisable: o.randomFullyDisable, Resync: time.Duration(o.iptablesSync) * time.Second}
		if !f.ipv6 {
			settings.PeersNetwork = peers
		}
		settings.Overlay = overlay
		var keeper interface {
			Run(ctx context.Context, network netip.Prefix, subnet func() netip.Prefix) error
		}
		if cfg.EnableNFTables {
			keeper, err = firewall.NewNFTKeeper(settings, log)
		} else {
			keeper, err = firewall.NewKeeper(settings, log)
		}
		switch {
		case err != nil && o.ipMasq && cfg.EnableNFTables:
			return fmt.Errorf(`-ip-masq: %w; the config asks for nftables ("EnableNFTables": true): use a kernel with nf_tables, or drop the key to use iptables`, err)
		case err != nil && o.ipMasq:
			return fmt.Errorf("-ip-masq: %w; install it or drop -ip-masq", err)
		case err != nil:
			log.Warn("no "+mode+": forwarded traffic depends on the FORWARD policy (-iptables-forward-rules=false silences this)", "err", err)
			return nil
		}
		g.Go(func() error { return keeper.Run(ctx, f.network, f.subnet) })
	}
	obs.setFirewall(o.ipMasq, o.forwardRules)
	return nil
}
