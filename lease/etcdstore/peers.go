package etcdstore

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/weftnet/weft/lease"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Outside peers live at <prefix>/peers/<name>, beside subnets/ (flannel
// reads only subnets/ and config).

var _ lease.PeerStore = (*Store)(nil)

func (s *Store) peerKey(name string) string { return s.prefix + "/peers/" + name }

// Peers lists the outside peers. A value that does not decode is left out
// and named in bad, never fatal.
func (s *Store) Peers(ctx context.Context) (peers []lease.OutsidePeer, bad []error, err error) {
	peers, bad, _, err = s.peersAt(ctx)
	return peers, bad, err
}

// peersAt is Peers and the store revision it read them at.
func (s *Store) peersAt(ctx context.Context) (peers []lease.OutsidePeer, bad []error, rev int64, err error) {
	resp, err := s.client.Get(ctx, s.prefix+"/peers/", clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, err
	}
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), s.prefix+"/peers/")
		p, err := lease.DecodeOutsidePeer(name, kv.Value)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		p.Created = kv.CreateRevision
		peers = append(peers, p)
	}
	lease.SortPeers(peers)
	return peers, bad, resp.Header.Revision, nil
}

// peersRetry is how long WatchPeers waits before it reads and watches
// again after etcd failed it.
const peersRetry = 2 * time.Second

// WatchPeers calls update with the outside peers now and again after every
// change under <prefix>/peers/, until ctx ends. The watch starts at the
// revision of the read, so no change falls between the two; a watch that
// breaks (etcd down, its member cut off from the leader, a compaction) is
// replaced by a fresh read and watch. While etcd is away the last set
// stands.
func (s *Store) WatchPeers(ctx context.Context, update func(peers []lease.OutsidePeer, bad []error)) error {
	for {
		peers, bad, rev, err := s.peersAt(ctx)
		if err == nil {
			update(peers, bad)
			events := s.client.Watch(clientv3.WithRequireLeader(ctx), s.prefix+"/peers/", clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			for resp := range events {
				if resp.Err() != nil || resp.Canceled {
					break
				}
				if peers, bad, _, err = s.peersAt(ctx); err != nil {
					break
				}
				update(peers, bad)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(peersRetry):
		}
	}
}

// AddPeer stores a new outside peer; ErrExists when the name is taken.
func (s *Store) AddPeer(ctx context.Context, p lease.OutsidePeer) error {
	key := s.peerKey(p.Name)
	resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(p.Encode()))).Commit()
	if err == nil && !resp.Succeeded {
		err = fmt.Errorf("%w: peer %s", lease.ErrExists, p.Name)
	}
	return err
}

// RemovePeer deletes an outside peer; it reports whether there was one.
func (s *Store) RemovePeer(ctx context.Context, name string) (bool, error) {
	resp, err := s.client.Delete(ctx, s.peerKey(name))
	if err != nil {
		return false, err
	}
	return resp.Deleted > 0, nil
}
