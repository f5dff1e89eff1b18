package etcdstore

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// configRetry is how long WatchConfig waits before it watches again after
// etcd ended its watch (etcd down, its member cut off from the leader).
const configRetry = 2 * time.Second

// WatchConfig implements lease.Store. Each watch it starts (the first, and
// each after one broke) begins with a signal of its own: a write between
// the caller's last read and the watch's start would otherwise go unseen
// until the caller's next resync.
func (s *Store) WatchConfig(ctx context.Context) <-chan struct{} {
	changed := make(chan struct{}, 1)
	signal := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(changed)
		for ctx.Err() == nil {
			watchCtx, cancel := context.WithCancel(ctx)
			events := s.client.Watch(clientv3.WithRequireLeader(watchCtx), s.prefix+"/config")
			signal()
			for resp := range events {
				if resp.Err() != nil || resp.Canceled {
					break
				}
				if len(resp.Events) > 0 {
					signal()
				}
			}
			cancel() // ends the etcd watch stream with this round
			select {
			case <-ctx.Done():
			case <-time.After(configRetry):
			}
		}
	}()
	return changed
}
