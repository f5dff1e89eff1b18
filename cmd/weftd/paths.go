package main

import (
	"log/slog"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/mesh"
)

// pathLog logs, once per peer, that its traffic goes in clear and why (the
// Reconciler's OnPeersChanged): its lease names an unencrypted backend, or
// DirectRouting reaches it without WireGuard. A peer whose reason changes
// is logged again. When one apply brings more than pathLogEach peers in
// clear (the start of a large vxlan cluster), they are logged as one line
// per reason with a count, not one line per peer.
//
// It keeps no record of what it said: a peer that changed comes in gone
// as it was and in added as it is, and the rule tells both reasons. (A
// map of every peer in clear was 3 MB at 50,000 vxlan leases.)
type pathLog struct {
	rule backends.PathRule
	log  *slog.Logger
}

// pathLogEach is how many peers one apply logs a line each for.
const pathLogEach = 16

func newPathLog(rule backends.PathRule, log *slog.Logger) *pathLog {
	return &pathLog{rule: rule, log: log}
}

// inClear is one peer to log: its lease key and its path.
type inClear struct {
	key  string
	path backends.Path
}

// peersChanged takes the peers that left the desired state or changed
// (gone, as they were) and those that joined it or changed (added, as
// they are).
func (p *pathLog) peersChanged(gone, added []mesh.Peer) {
	var before map[string]string // the reasons of changed peers, as they were
	if len(gone) > 0 {
		before = make(map[string]string, len(gone))
		for _, peer := range gone {
			before[peer.Key] = p.rule.Of(peer).Why
		}
	}
	// Only the first few peers in clear are kept, and a count per path
	// and reason: at the start of a large vxlan cluster every peer is new
	// and in clear, and a list of them all was 4 MB at 50,000 leases.
	var first []inClear // up to pathLogEach+1, logged one by one if that is all
	var order []*clearGroup
	groups := map[backends.Path]*clearGroup{}
	for _, peer := range added {
		path := p.rule.Of(peer)
		if path.Encrypted {
			continue
		}
		if was, changed := before[peer.Key]; changed && was == path.Why {
			continue
		}
		if len(first) <= pathLogEach {
			first = append(first, inClear{peer.Key, path})
		}
		g := groups[path]
		if g == nil {
			g = &clearGroup{path: path}
			groups[path] = g
			order = append(order, g)
		}
		if g.count++; len(g.first) < mesh.SummaryKeys {
			g.first = append(g.first, peer.Key)
		}
	}
	if len(first) <= pathLogEach {
		for _, n := range first {
			p.log.Info("peer in clear", "lease", n.key, "path", n.path.Name, "why", n.path.Why)
		}
		return
	}
	// One line per path and reason, in the order the reasons first appear.
	for _, g := range order {
		p.log.Info("peers in clear", "count", g.count, "path", g.path.Name, "why", g.path.Why, "leases",
			mesh.SummarizeFirstKeys(g.first, g.count))
	}
}

// clearGroup counts the peers in clear by one path for one reason, naming
// the first few.
type clearGroup struct {
	path  backends.Path
	count int
	first []string
}
