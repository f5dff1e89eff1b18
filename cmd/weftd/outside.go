package main

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/lease"
)

// outsidePoll bounds how long an outside peer added or removed with
// `weftctl peer` takes to reach the hosts.
const outsidePoll = 5 * time.Second

// outsidePeers polls <prefix>/peers/ and tells the reconciler when the
// outside peers change (mesh.OutsideSource). Polling, not a watch: the
// set is small and changes by hand; a read every few seconds costs etcd
// nothing.
type outsidePeers struct {
	store   *lease.EtcdStore
	log     *slog.Logger
	changed chan struct{}

	mu    sync.Mutex
	peers []lease.OutsidePeer
	bad   string
}

func newOutsidePeers(store *lease.EtcdStore, log *slog.Logger) *outsidePeers {
	return &outsidePeers{store: store, log: log.With("component", "outside-peers"), changed: make(chan struct{}, 1)}
}

// Peers returns the last read set.
func (o *outsidePeers) Peers() []lease.OutsidePeer {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.peers)
}

// Changed signals a change of the set.
func (o *outsidePeers) Changed() <-chan struct{} { return o.changed }

// Run reads the peers every interval until ctx ends; an etcd error keeps
// the last set.
func (o *outsidePeers) Run(ctx context.Context, every time.Duration) error {
	for {
		if peers, bad, err := o.store.Peers(ctx); err == nil {
			o.update(peers, bad)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func (o *outsidePeers) update(peers []lease.OutsidePeer, bad []error) {
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
