package main

import (
	"log/slog"
	"slices"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/liveswitch"
	"github.com/weftnet/weft/backends/nft"
	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/lease"
)

// sourceFilter is the backends' source filter for a tunnel on this host's
// nftables (nil when -tunnel-source-filter is off). A filter left by an
// earlier run that this one does not keep (turned off, or a backend
// without a tunnel now) is removed: it would drop a later tunnel's peers.
// During a switch a legacy tunnel backend (plan) keeps it.
func sourceFilter(o *options, cfg *lease.Config, plan liveswitch.Plan,
	log *slog.Logger) func(tunnelfilter.Tunnel) (backends.SourceFilter, error) {
	tunnel := slices.ContainsFunc(append([]string{cfg.Backend.Type}, plan.LegacyTypes()...), func(t string) bool {
		k, _ := backends.Lookup(t)
		return k.Tunnel
	})
	if !o.tunnelSourceFilter || !tunnel {
		if conn, err := nft.Open(); err == nil {
			if removed, err := tunnelfilter.Remove(conn); removed || err != nil {
				log.Info("removed the tunnel source filter of an earlier run", "table", tunnelfilter.TableName, "err", err)
			}
		}
		if tunnel {
			log.Warn("-tunnel-source-filter=false: this host accepts tunnel packets from any source; anyone who reaches " +
				"its address can inject packets into its containers")
		}
		return nil
	}
	return func(t tunnelfilter.Tunnel) (backends.SourceFilter, error) {
		conn, err := nft.Open()
		if err != nil {
			return nil, err
		}
		return tunnelfilter.New(conn, t), nil
	}
}
