// Package leasetest provides an in-memory lease.Store for tests of the
// layers above the store (mesh, backends, cmd) that need no etcd. The real
// store is tested against a real etcd in package lease.
package leasetest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/lease"
)

// Store is an in-memory lease.Store with revisions and watches. TTLs are
// recorded but only expire when a test calls Expire. The zero value is not
// usable; use New.
type Store struct {
	mu       sync.Mutex
	config   []byte
	records  map[string]lease.Record
	ttls     map[int64]time.Duration
	rev      int64
	nextID   int64
	history  []histEntry             // every change since the last Compact, for watches
	compact  int64                   // revisions up to this one are forgotten
	base     map[string]lease.Record // the records at the compact revision
	watchers map[chan struct{}]bool
	// configWatchers are WatchConfig's channels, signalled at PutConfig.
	configWatchers map[chan struct{}]bool
	// peers are the outside peers by name (peers.go); peersRev counts
	// their changes, for WatchPeers.
	peers    map[string]peerRecord
	peersRev int64
	// membership are the membership records by name (membership.go).
	membership map[string][]byte
	// Down, when set, makes every call fail as if the store were unreachable.
	down bool
	// QuietWatchWhileDown makes a watch wait silently while the store is
	// down, as etcd's client does (it reconnects by itself), instead of
	// ending with ErrDown. Set it before the first Watch.
	QuietWatchWhileDown bool
}

type histEntry struct {
	rev int64
	ev  lease.RecordEvent
}

var _ lease.Store = (*Store)(nil)

// New returns an empty store holding config (nil for none).
func New(config []byte) *Store {
	return &Store{config: config, records: map[string]lease.Record{}, ttls: map[int64]time.Duration{},
		watchers: map[chan struct{}]bool{}, configWatchers: map[chan struct{}]bool{}, peers: map[string]peerRecord{}, nextID: 1}
}

// ErrDown is what every call returns while the store is down.
var ErrDown = fmt.Errorf("leasetest: store is down")

// SetDown makes the store unreachable (true) or reachable again.
func (s *Store) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
	s.wake()
}

func (s *Store) check() error {
	if s.down {
		return ErrDown
	}
	return nil
}

// Config implements lease.Store.
func (s *Store) Config(context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, err
	}
	if s.config == nil {
		return nil, lease.ErrNoConfig
	}
	return s.config, nil
}

// PutConfig implements lease.Store.
func (s *Store) PutConfig(_ context.Context, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	s.config = v
	for w := range s.configWatchers {
		signal(w)
	}
	return nil
}

// WatchConfig implements lease.Store: it signals once at the start, as
// etcd's does at each watch it starts, and after every PutConfig.
func (s *Store) WatchConfig(ctx context.Context) <-chan struct{} {
	changed := make(chan struct{}, 1)
	signal(changed)
	s.mu.Lock()
	s.configWatchers[changed] = true
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		delete(s.configWatchers, changed)
		close(changed)
		s.mu.Unlock()
	}()
	return changed
}

// signal wakes a 1-buffered channel unless it is already awake.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Revision implements lease.Store.
func (s *Store) Revision(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return 0, err
	}
	return s.rev, nil
}

// Wipe forgets everything, revisions included, as an etcd restored empty.
func (s *Store) Wipe() {
	s.mu.Lock()
	s.records, s.history, s.rev, s.compact, s.base = map[string]lease.Record{}, nil, 0, 0, nil
	s.mu.Unlock()
}

// Get implements lease.Store.
func (s *Store) Get(_ context.Context, key string) (lease.Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return lease.Record{}, false, err
	}
	r, ok := s.records[key]
	return r, ok, nil
}

// GetAt implements lease.Store from the history kept since the last
// Compact.
func (s *Store) GetAt(_ context.Context, key string, rev int64) (lease.Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return lease.Record{}, false, err
	}
	switch {
	case rev > s.rev:
		return lease.Record{}, false, lease.ErrFutureRevision
	case rev < s.compact:
		return lease.Record{}, false, lease.ErrCompacted
	}
	r, ok := s.base[key]
	for _, h := range s.history {
		if h.rev > rev {
			break
		}
		if h.ev.Record.Key == key {
			r, ok = h.ev.Record, !h.ev.Deleted
		}
	}
	return r, ok, nil
}

// List implements lease.Store, in key order.
func (s *Store) List(context.Context) ([]lease.Record, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, 0, err
	}
	// In key order, as etcd lists a range: a caller that takes the first
	// record of a kind sees here what it sees on etcd.
	out := slices.SortedFunc(maps.Values(s.records), func(a, b lease.Record) int { return strings.Compare(a.Key, b.Key) })
	return out, s.rev, nil
}

// Watch implements lease.Store. History before Compact is gone, as in etcd.
func (s *Store) Watch(ctx context.Context, from int64) <-chan lease.WatchResponse {
	out := make(chan lease.WatchResponse)
	wake := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[wake] = true
	s.mu.Unlock()
	go func() {
		defer close(out)
		defer func() { s.mu.Lock(); delete(s.watchers, wake); s.mu.Unlock() }()
		next := from + 1
		for {
			s.mu.Lock()
			var resp lease.WatchResponse
			switch {
			case s.down && s.QuietWatchWhileDown:
				// Like etcd's client: wait for the store to come back.
			case s.down:
				resp.Err = ErrDown
			case next <= s.compact:
				resp.Err = lease.ErrCompacted
			default:
				for _, h := range s.history {
					if h.rev >= next {
						resp.Events = append(resp.Events, h.ev)
						next = h.rev + 1
					}
				}
			}
			s.mu.Unlock()
			if resp.Err != nil || len(resp.Events) > 0 {
				select {
				case out <- resp:
				case <-ctx.Done():
					return
				}
				if resp.Err != nil {
					return
				}
				continue
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (s *Store) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for w := range s.watchers {
		signal(w)
	}
}

// commitLocked records a change and returns its revision. A key written
// anew gets that revision as its create revision; a rewrite keeps it.
func (s *Store) commitLocked(ev lease.RecordEvent) int64 {
	s.rev++
	ev.Record.Revision = s.rev
	if old, ok := s.records[ev.Record.Key]; ok && !ev.Deleted {
		ev.Record.CreateRevision = old.CreateRevision
	} else {
		ev.Record.CreateRevision = s.rev
	}
	if ev.Deleted {
		delete(s.records, ev.Record.Key)
	} else {
		s.records[ev.Record.Key] = ev.Record
	}
	s.history = append(s.history, histEntry{rev: s.rev, ev: ev})
	return s.rev
}

func (s *Store) put(key string, value []byte, ttl time.Duration, ok func(lease.Record, bool) bool, lost error) (lease.Record, error) {
	s.mu.Lock()
	if err := s.check(); err != nil {
		s.mu.Unlock()
		return lease.Record{}, err
	}
	old, exists := s.records[key]
	if !ok(old, exists) {
		s.mu.Unlock()
		return lease.Record{}, lost
	}
	var id int64 // a reservation (ttl 0) has no TTL handle
	if ttl > 0 {
		id = s.nextID
		s.nextID++
		s.ttls[id] = ttl
	}
	rec := lease.Record{Key: key, Value: append([]byte(nil), value...), StoreLeaseID: id}
	rec.Revision = s.commitLocked(lease.RecordEvent{Record: rec})
	rec.CreateRevision = s.records[key].CreateRevision
	s.mu.Unlock()
	s.wake()
	return rec, nil
}

// Create implements lease.Store.
func (s *Store) Create(_ context.Context, key string, value []byte, ttl time.Duration) (lease.Record, error) {
	return s.put(key, value, ttl, func(_ lease.Record, exists bool) bool { return !exists }, lease.ErrExists)
}

// CreateIfNoneSince implements lease.Store.
func (s *Store) CreateIfNoneSince(_ context.Context, key string, value []byte, ttl time.Duration, listed int64) (lease.Record, error) {
	return s.put(key, value, ttl, func(_ lease.Record, exists bool) bool {
		for _, r := range s.records {
			if r.CreateRevision > listed {
				return false
			}
		}
		return !exists
	}, lease.ErrExists)
}

// Replace implements lease.Store.
func (s *Store) Replace(_ context.Context, old lease.Record, value []byte, ttl time.Duration) (lease.Record, error) {
	return s.put(old.Key, value, ttl, func(cur lease.Record, exists bool) bool {
		return exists && cur.Revision == old.Revision
	}, lease.ErrConflict)
}

// Renew implements lease.Store.
func (s *Store) Renew(_ context.Context, rec lease.Record) (time.Duration, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return 0, err
	}
	ttl, ok := s.ttls[rec.StoreLeaseID]
	if !ok {
		return 0, lease.ErrLeaseLost
	}
	return ttl, nil
}

// Expiry implements lease.Store.
func (s *Store) Expiry(_ context.Context, rec lease.Record) (time.Duration, error) {
	return s.Renew(context.Background(), rec)
}

// Delete implements lease.Store.
func (s *Store) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	if err := s.check(); err != nil {
		s.mu.Unlock()
		return err
	}
	if rec, ok := s.records[key]; ok {
		s.commitLocked(lease.RecordEvent{Record: lease.Record{Key: key, StoreLeaseID: rec.StoreLeaseID}, Deleted: true})
	}
	s.mu.Unlock()
	s.wake()
	return nil
}

// Expire drops the TTL handle behind key and the key itself, as etcd does
// when a lease runs out.
func (s *Store) Expire(key string) {
	s.mu.Lock()
	if rec, ok := s.records[key]; ok {
		delete(s.ttls, rec.StoreLeaseID)
		s.commitLocked(lease.RecordEvent{Record: lease.Record{Key: key}, Deleted: true})
	}
	s.mu.Unlock()
	s.wake()
}

// PutRaw writes any value at key (a hostile or foreign lease) without TTL.
func (s *Store) PutRaw(key string, value []byte) {
	s.mu.Lock()
	s.commitLocked(lease.RecordEvent{Record: lease.Record{Key: key, Value: value}})
	s.mu.Unlock()
	s.wake()
}

// Compact forgets all history, so a watch from an older revision fails
// with lease.ErrCompacted.
func (s *Store) Compact() {
	s.mu.Lock()
	s.history = nil
	s.compact = s.rev
	s.base = maps.Clone(s.records)
	s.mu.Unlock()
	s.wake()
}
