package lease

import (
	"context"
	"errors"
	"time"
)

// Errors a Store returns; callers match them with errors.Is.
var (
	// ErrNoConfig means <prefix>/config does not exist (yet).
	ErrNoConfig = errors.New("network config not found")
	// ErrExists means Create lost: the key is already there.
	ErrExists = errors.New("lease key already exists")
	// ErrConflict means Replace lost: the lease changed since it was read.
	ErrConflict = errors.New("lease changed concurrently")
	// ErrLeaseLost means the store no longer holds the lease (deleted or expired).
	ErrLeaseLost = errors.New("lease lost")
	// ErrCompacted means a watch asked for history the store has compacted away;
	// the caller must list again.
	ErrCompacted = errors.New("watch revision compacted")
	// ErrFutureRevision means a read asked for a revision the store has
	// not reached: its history went back (etcd wiped or restored).
	ErrFutureRevision = errors.New("revision is in the store's future")
)

// Record is one raw entry under <prefix>/subnets/, before decoding.
type Record struct {
	// Key is relative to <prefix>/subnets/, e.g. "10.5.34.0-24".
	Key   string
	Value []byte
	// Revision is the store revision that last modified the key.
	Revision int64
	// CreateRevision is the store revision that created the key: it stays
	// while the key is rewritten and changes only when the key is deleted
	// and created anew (a lease that expired and was claimed again).
	CreateRevision int64
	// StoreLeaseID is the TTL handle attached to the key (0 for none).
	StoreLeaseID int64
}

// RecordEvent is one change seen by a watch.
type RecordEvent struct {
	Record  Record
	Deleted bool
}

// WatchResponse is one batch of changes, or the error that ended a watch.
// After a response with Err the channel is closed.
type WatchResponse struct {
	Events []RecordEvent
	Err    error
}

// Store is what weft needs from its cluster store: the network config and an
// atomic, TTL-bound key space for leases. The etcd implementation is in
// lease/etcdstore; lease/leasetest has an in-memory one for tests.
type Store interface {
	// Config returns the raw <prefix>/config value, or ErrNoConfig.
	Config(ctx context.Context) ([]byte, error)
	// PutConfig writes <prefix>/config.
	PutConfig(ctx context.Context, value []byte) error
	// WatchConfig signals on the returned channel after <prefix>/config is
	// written or deleted, until ctx ends (then the channel closes). It is
	// 1-buffered, so a burst of writes is one signal; a signal also
	// follows a watch that broke and was started again (a write may fall
	// in between), so the caller reads Config again and compares.
	WatchConfig(ctx context.Context) <-chan struct{}
	// Revision returns the store's current revision (cheap: no values).
	Revision(ctx context.Context) (int64, error)
	// Get returns the record at key; ok is false when there is none.
	Get(ctx context.Context, key string) (rec Record, ok bool, err error)
	// GetAt returns the record at key as it was at revision rev: ok is
	// false when the key did not exist then; ErrCompacted when that history
	// is gone, ErrFutureRevision when the store has not reached rev.
	GetAt(ctx context.Context, key string, rev int64) (rec Record, ok bool, err error)
	// List returns every lease record and the revision it was read at.
	List(ctx context.Context) ([]Record, int64, error)
	// Watch streams changes after fromRevision (exclusive) until ctx ends or
	// an error (ErrCompacted included) closes the channel.
	Watch(ctx context.Context, fromRevision int64) <-chan WatchResponse
	// Create writes key only if it does not exist, bound to a new TTL;
	// ErrExists if it does.
	Create(ctx context.Context, key string, value []byte, ttl time.Duration) (Record, error)
	// CreateIfNoneSince is Create that also loses (ErrExists) when any
	// lease was created after revision listed, the revision of the List
	// the key was chosen from. A dual-stack key names both halves, so two
	// hosts that picked the same IPv4 subnet with different IPv6 ones write
	// different keys: only this makes their choice atomic.
	CreateIfNoneSince(ctx context.Context, key string, value []byte, ttl time.Duration, listed int64) (Record, error)
	// Replace overwrites old only if it is unchanged since old.Revision, bound
	// to a new TTL, or to none when ttl is 0 (a reservation);
	// ErrConflict otherwise.
	Replace(ctx context.Context, old Record, value []byte, ttl time.Duration) (Record, error)
	// Renew restarts the record's TTL and returns it; ErrLeaseLost if the
	// store no longer has it.
	Renew(ctx context.Context, rec Record) (time.Duration, error)
	// Expiry returns how long the record's TTL has left (0 when it has none).
	Expiry(ctx context.Context, rec Record) (time.Duration, error)
	// Delete removes a key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}
