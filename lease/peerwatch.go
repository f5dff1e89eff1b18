package lease

import (
	"context"
	"log/slog"
	"slices"
	"sync"
)

// PeerWatcher watches <prefix>/peers/ and tells the reconciler when the
// outside peers change (mesh.OutsideSource): a peer added or removed with
// `weftctl peer` reaches every host as soon as etcd says so.
type PeerWatcher struct {
	store   PeerStore
	log     *slog.Logger
	changed chan struct{}
	// Admit, when set, says why a peer is left out (lease/membership's
	// enforce mode: it has no CA seal), or "".
	Admit func(OutsidePeer) string

	mu    sync.Mutex
	peers []OutsidePeer
	bad   string
}

// NewPeerWatcher makes a watcher of store's outside peers; Run starts it.
func NewPeerWatcher(store PeerStore, log *slog.Logger) *PeerWatcher {
	return &PeerWatcher{store: store, log: log.With("component", "outside-peers"), changed: make(chan struct{}, 1)}
}

// Peers returns the last read set.
func (o *PeerWatcher) Peers() []OutsidePeer {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.peers)
}

// Changed signals a change of the set.
func (o *PeerWatcher) Changed() <-chan struct{} { return o.changed }

// Run follows the peers until ctx ends; while etcd is away the last set
// stands.
func (o *PeerWatcher) Run(ctx context.Context) error { return o.store.WatchPeers(ctx, o.update) }

func (o *PeerWatcher) update(peers []OutsidePeer, bad []error) {
	if o.Admit != nil {
		peers = slices.DeleteFunc(peers, func(p OutsidePeer) bool { return o.Admit(p) != "" })
	}
	o.mu.Lock()
	same := slices.Equal(peers, o.peers)
	if !same {
		o.peers = peers
	}
	badText := ""
	for _, err := range bad {
		badText += err.Error() + "; "
	}
	newBad := badText != o.bad
	o.bad = badText
	o.mu.Unlock()
	if newBad && badText != "" {
		o.log.Warn("skipping outside peers that do not decode", "errors", badText)
	}
	if !same {
		o.log.Info("outside peers changed", "peers", len(peers))
		select {
		case o.changed <- struct{}{}:
		default:
		}
	}
}
