package main

import (
	"log/slog"
	"sync"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/mesh"
)

// pathLog logs, once per peer, that its traffic goes in clear and why (the
// Reconciler's OnPeersChanged): its lease names an unencrypted backend, or
// DirectRouting reaches it without WireGuard. A peer whose reason changes
// is logged again; one that leaves is forgotten.
type pathLog struct {
	rule backends.PathRule
	log  *slog.Logger

	mu   sync.Mutex
	said map[string]string // lease key → the reason logged
}

func newPathLog(rule backends.PathRule, log *slog.Logger) *pathLog {
	return &pathLog{rule: rule, log: log, said: map[string]string{}}
}

// peersChanged takes the peers that left the desired state or changed
// (gone) and those that joined it or changed (added).
func (p *pathLog) peersChanged(gone, added []mesh.Peer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	stays := make(map[string]bool, len(added))
	for _, peer := range added {
		stays[peer.Key] = true
		path := p.rule.Of(peer)
		if path.Encrypted {
			delete(p.said, peer.Key)
			continue
		}
		if p.said[peer.Key] != path.Why {
			p.log.Info("peer in clear", "lease", peer.Key, "path", path.Name, "why", path.Why)
			p.said[peer.Key] = path.Why
		}
	}
	for _, peer := range gone {
		if !stays[peer.Key] {
			delete(p.said, peer.Key)
		}
	}
}
