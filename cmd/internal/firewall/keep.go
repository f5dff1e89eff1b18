package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/coreos/go-iptables/iptables"
	"golang.org/x/sync/errgroup"
)

// Keeper keeps weft's rules of one address family, in either mode: the
// IPTablesKeeper's chains or the NFTablesKeeper's table.
type Keeper interface {
	// Run keeps the rules until ctx ends; subnet returns the lease's
	// current subnet of the family.
	Run(ctx context.Context, network netip.Prefix, subnet func() netip.Prefix) error
	// Sync makes the rules right once.
	Sync(network, subnet netip.Prefix) error
}

var (
	_ Keeper = (*IPTablesKeeper)(nil)
	_ Keeper = (*NFTablesKeeper)(nil)
)

// Family is one address family of the network the firewall keeps rules
// for: its pool and the lease's current subnet of it.
type Family struct {
	IPv6    bool
	Network netip.Prefix
	Subnet  func() netip.Prefix
}

// NewKeeper makes the keeper of the mode the config asks for (nftables:
// "EnableNFTables") for settings' family.
func NewKeeper(nftables bool, settings Settings, log *slog.Logger) (Keeper, error) {
	if nftables {
		return NewNFTablesKeeper(settings, log)
	}
	return NewIPTablesKeeper(settings, log)
}

// Keep is weftd's firewall: it removes the other mode's rules (as flannel
// cleans up the traffic manager it does not use at every start, so after
// a switch of "EnableNFTables" nothing of the old mode acts twice), then,
// when settings ask for masquerading or forward rules, runs a keeper per
// family in g. PeersNetwork is IPv4 only. It says whether keepers run.
// Without the mode's tool, masquerading is an error and forward rules
// only a warning.
func Keep(ctx context.Context, g *errgroup.Group, nftables bool, settings Settings, families []Family,
	log *slog.Logger) (bool, error) {
	other, mode := CleanupNFTables, "iptables"
	if nftables {
		other, mode = CleanupIPTables, "nftables"
	}
	removed, err := other()
	for _, r := range removed {
		log.Info("removed the other firewall mode's rules", "removed", r, "mode", mode)
	}
	if err != nil {
		log.Warn("removing the other firewall mode's rules", "err", err, "mode", mode)
	}
	if !settings.Masq && !settings.Forward && !settings.Strict && settings.ClampMTU == 0 {
		if nftables {
			// weft's table holds nothing but what settings ask for: a
			// previous run's (strict encryption's drop, the MSS clamp)
			// goes whole.
			removed, err := deleteNFTTables(NFTTableIPv4, NFTTableIPv6)
			for _, r := range removed {
				log.Info("removed weft's nftables table: no setting asks for a rule", "removed", r)
			}
			if err != nil {
				log.Warn("removing weft's nftables tables", "err", err)
			}
		} else {
			removeUnwantedIPTables(log)
		}
		return false, nil
	}
	for _, f := range families {
		s := settings
		s.IPv6 = f.IPv6
		if f.IPv6 {
			s.PeersNetwork = netip.Prefix{}
		}
		keeper, err := NewKeeper(nftables, s, log)
		switch {
		case err != nil && settings.Strict:
			return false, fmt.Errorf(`"StrictEncryption": %w; without the %s rule nothing keeps traffic to other hosts `+
				`from leaving in clear`, err, mode)
		case err != nil && settings.Masq && nftables:
			return false, fmt.Errorf(`-ip-masq: %w; the config asks for nftables ("EnableNFTables": true): use a kernel `+
				`with nf_tables, or drop the key to use iptables`, err)
		case err != nil && settings.Masq:
			return false, fmt.Errorf("-ip-masq: %w; install it or drop -ip-masq", err)
		case err != nil:
			log.Warn("no "+mode+": forwarded traffic depends on the FORWARD policy "+
				"(-iptables-forward-rules=false silences this)", "err", err)
			return false, nil
		}
		g.Go(func() error { return keeper.Run(ctx, f.Network, f.Subnet) })
	}
	return true, nil
}

// removeUnwantedIPTables removes the chains a previous run kept for a
// setting this one has not (removeUnwanted), when no keeper runs to do it.
func removeUnwantedIPTables(log *slog.Logger) {
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			continue
		}
		if err := removeUnwanted(ipt, Settings{}, log); err != nil {
			log.Warn("removing a chain no setting asks for", "err", err)
		}
	}
}
