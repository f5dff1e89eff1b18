package leasetest

import (
	"context"
	"fmt"

	"github.com/weftnet/weft/lease"
)

// Outside peers, kept as etcdstore.Store keeps them under <prefix>/peers/: the
// stored value and the revision that created it.

type peerRecord struct {
	value   []byte
	created int64
}

var _ lease.PeerStore = (*Store)(nil)

// Peers implements lease.PeerStore.
func (s *Store) Peers(context.Context) ([]lease.OutsidePeer, []error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, nil, err
	}
	return s.peersLocked()
}

func (s *Store) peersLocked() ([]lease.OutsidePeer, []error, error) {
	var peers []lease.OutsidePeer
	var bad []error
	for name, r := range s.peers {
		p, err := lease.DecodeOutsidePeer(name, r.value)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		p.Created = r.created
		peers = append(peers, p)
	}
	lease.SortPeers(peers)
	return peers, bad, nil
}

// WatchPeers implements lease.PeerStore: update gets the peers now and
// after every change, until ctx ends; while the store is down the last set
// stands.
func (s *Store) WatchPeers(ctx context.Context, update func([]lease.OutsidePeer, []error)) error {
	w := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[w] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	}()
	seen := int64(-1)
	for {
		s.mu.Lock()
		changed := s.check() == nil && s.peersRev != seen
		var peers []lease.OutsidePeer
		var bad []error
		if changed {
			seen = s.peersRev
			peers, bad, _ = s.peersLocked()
		}
		s.mu.Unlock()
		if changed {
			update(peers, bad)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w:
		}
	}
}

// AddPeer implements lease.PeerStore.
func (s *Store) AddPeer(_ context.Context, p lease.OutsidePeer) error {
	s.mu.Lock()
	if err := s.check(); err != nil {
		s.mu.Unlock()
		return err
	}
	if _, ok := s.peers[p.Name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: peer %s", lease.ErrExists, p.Name)
	}
	s.rev++
	s.peers[p.Name] = peerRecord{value: p.Encode(), created: s.rev}
	s.peersRev++
	s.mu.Unlock()
	s.wake()
	return nil
}

// PutPeerRaw stores value as outside peer name as it is (a hostile or
// broken record).
func (s *Store) PutPeerRaw(name string, value []byte) {
	s.mu.Lock()
	s.rev++
	s.peers[name] = peerRecord{value: value, created: s.rev}
	s.peersRev++
	s.mu.Unlock()
	s.wake()
}

// RemovePeer implements lease.PeerStore.
func (s *Store) RemovePeer(_ context.Context, name string) (bool, error) {
	s.mu.Lock()
	if err := s.check(); err != nil {
		s.mu.Unlock()
		return false, err
	}
	_, found := s.peers[name]
	if found {
		delete(s.peers, name)
		s.rev++
		s.peersRev++
	}
	s.mu.Unlock()
	s.wake()
	return found, nil
}
