package lease

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Outside peers live at <prefix>/peers/<name>, beside subnets/ (flannel
// reads only subnets/ and config).

func (s *EtcdStore) peerKey(name string) string { return s.prefix + "/peers/" + name }

// Peers lists the outside peers. A value that does not decode is left out
// and named in bad, never fatal.
func (s *EtcdStore) Peers(ctx context.Context) (peers []OutsidePeer, bad []error, err error) {
	resp, err := s.client.Get(ctx, s.prefix+"/peers/", clientv3.WithPrefix())
	if err != nil {
		return nil, nil, err
	}
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), s.prefix+"/peers/")
		p, err := DecodeOutsidePeer(name, kv.Value)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		peers = append(peers, p)
	}
	SortPeers(peers)
	return peers, bad, nil
}

// AddPeer stores a new outside peer; ErrExists when the name is taken.
func (s *EtcdStore) AddPeer(ctx context.Context, p OutsidePeer) error {
	key := s.peerKey(p.Name)
	resp, err := s.client.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(p.Encode()))).Commit()
	if err == nil && !resp.Succeeded {
		err = fmt.Errorf("%w: peer %s", ErrExists, p.Name)
	}
	return err
}

// RemovePeer deletes an outside peer; it reports whether there was one.
func (s *EtcdStore) RemovePeer(ctx context.Context, name string) (bool, error) {
	resp, err := s.client.Delete(ctx, s.peerKey(name))
	if err != nil {
		return false, err
	}
	return resp.Deleted > 0, nil
}
