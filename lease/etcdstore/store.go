package etcdstore

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/weftnet/weft/lease"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/mirror"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DefaultPrefix is flannel's etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// Options says how to reach etcd; the fields mirror flanneld's flags.
type Options struct {
	Endpoints []string
	Prefix    string
	// CAFile alone enables server-verified TLS; CertFile and KeyFile add a
	// client certificate.
	CAFile, CertFile, KeyFile string
	Username, Password        string
	// DialTimeout bounds each connection attempt (default 5 s).
	DialTimeout time.Duration
	// Dial, when set, opens connections to etcd (the lab uses it to reach an
	// etcd inside a network namespace).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Store is the Store backed by etcd v3. Its zero value is not usable;
// use New.
type Store struct {
	client  *clientv3.Client
	prefix  string
	subnets string
	tls     *tls.Config
	dial    func(ctx context.Context, addr string) (net.Conn, error)
}

var _ lease.Store = (*Store)(nil)

// New builds a client; it does not wait for etcd to answer, so
// weftd can start (and say it is waiting) while etcd is down.
func New(opts Options) (*Store, error) {
	if len(opts.Endpoints) == 0 {
		return nil, errors.New("no etcd endpoints; set -etcd-endpoints, e.g. http://127.0.0.1:2379")
	}
	if err := opts.CheckTLS(); err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(opts.Prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	cfg := clientv3.Config{
		Endpoints:   opts.Endpoints,
		DialTimeout: opts.DialTimeout,
		Username:    opts.Username,
		Password:    opts.Password,
		// The client's own zap logs would duplicate ours at every retry.
		Logger: zap.NewNop(),
		// A member that is cut off (its machine gone, a partition) leaves
		// connections that never fail by themselves: keepalive pings
		// notice within 15 s and the client moves to another endpoint,
		// watch and all.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
	}
	if opts.Dial != nil {
		cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(opts.Dial))
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != "" {
		if (opts.CertFile == "") != (opts.KeyFile == "") {
			return nil, errors.New("-etcd-certfile and -etcd-keyfile go together; set both or neither")
		}
		info := transport.TLSInfo{TrustedCAFile: opts.CAFile, CertFile: opts.CertFile, KeyFile: opts.KeyFile}
		tlsCfg, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("loading etcd TLS files (-etcd-cafile %q, -etcd-certfile %q, -etcd-keyfile %q): %w",
				opts.CAFile, opts.CertFile, opts.KeyFile, err)
		}
		cfg.TLS = tlsCfg
	}
	client, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %v: %w", opts.Endpoints, err)
	}
	return &Store{client: client, prefix: prefix, subnets: prefix + "/subnets/", tls: cfg.TLS, dial: opts.Dial}, nil
}

// Diagnose says why etcd does not answer, when the client only reports a
// timeout: it connects to each endpoint itself (TLS handshake included) and
// returns the first concrete failure, such as a refused connection or a
// certificate signed by an unknown authority. nil means they all connect.
func (s *Store) Diagnose(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for _, ep := range s.client.Endpoints() {
		u, err := url.Parse(ep)
		if err != nil {
			return fmt.Errorf("endpoint %q: %w", ep, err)
		}
		dial := s.dial
		if dial == nil {
			var d net.Dialer
			dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
		}
		conn, err := dial(ctx, u.Host)
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", ep, err)
		}
		if u.Scheme == "https" && s.tls != nil {
			cfg := s.tls.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName = u.Hostname()
			}
			tc := tls.Client(conn, cfg)
			err = tc.HandshakeContext(ctx)
			conn = tc
		} else if u.Scheme == "https" {
			err = errors.New("endpoint uses https but no TLS options are set; add -etcd-cafile")
		}
		conn.Close()
		if err != nil {
			return fmt.Errorf("endpoint %s: TLS: %w (check -etcd-cafile, -etcd-certfile and -etcd-keyfile)", ep, err)
		}
	}
	return nil
}

// Close releases the client's connections.
func (s *Store) Close() error { return s.client.Close() }

// Prefix is the key prefix in use.
func (s *Store) Prefix() string { return s.prefix }

// Config implements Store.
func (s *Store) Config(ctx context.Context) ([]byte, error) {
	resp, err := s.client.Get(ctx, s.prefix+"/config")
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w at %s/config", lease.ErrNoConfig, s.prefix)
	}
	return resp.Kvs[0].Value, nil
}

// PutConfig implements Store.
func (s *Store) PutConfig(ctx context.Context, value []byte) error {
	_, err := s.client.Put(ctx, s.prefix+"/config", string(value))
	return err
}

// Revision implements Store.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.client.Get(ctx, s.subnets, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// Get implements Store.
func (s *Store) Get(ctx context.Context, key string) (lease.Record, bool, error) {
	resp, err := s.client.Get(ctx, s.subnets+key)
	if err != nil || len(resp.Kvs) == 0 {
		return lease.Record{}, false, err
	}
	kv := resp.Kvs[0]
	return lease.Record{Key: key, Value: kv.Value, Revision: kv.ModRevision, CreateRevision: kv.CreateRevision, StoreLeaseID: kv.Lease}, true, nil
}

// GetAt implements Store.
func (s *Store) GetAt(ctx context.Context, key string, rev int64) (lease.Record, bool, error) {
	resp, err := s.client.Get(ctx, s.subnets+key, clientv3.WithRev(rev))
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return lease.Record{}, false, fmt.Errorf("%w (reading revision %d)", lease.ErrCompacted, rev)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return lease.Record{}, false, fmt.Errorf("%w (reading revision %d)", lease.ErrFutureRevision, rev)
	case err != nil || len(resp.Kvs) == 0:
		return lease.Record{}, false, err
	}
	kv := resp.Kvs[0]
	return lease.Record{Key: key, Value: kv.Value, Revision: kv.ModRevision, CreateRevision: kv.CreateRevision, StoreLeaseID: kv.Lease}, true, nil
}

// leaseKey is an etcd key relative to <prefix>/subnets/, in a string of its
// own: a substring of the whole key would keep the whole key's bytes for
// as long as the lease is kept.
func (s *Store) leaseKey(key []byte) string {
	return string(bytes.TrimPrefix(key, []byte(s.subnets)))
}

// List implements Store. It reads the leases in pages of 1,000 (etcd's
// mirror.Syncer), all at one revision, so the result is one consistent
// snapshot without one 10 MB response at 50,000 leases; when that
// revision is compacted away between pages, it starts over.
func (s *Store) List(ctx context.Context) ([]lease.Record, int64, error) {
	for {
		out, rev, err := s.listPages(ctx)
		if errors.Is(err, rpctypes.ErrCompacted) {
			continue
		}
		return out, rev, err
	}
}

func (s *Store) listPages(ctx context.Context) ([]lease.Record, int64, error) {
	// The revision to read at, and how many leases to expect.
	head, err := s.client.Get(ctx, s.subnets, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, 0, err
	}
	out := make([]lease.Record, 0, head.Count)
	pages, errc := mirror.NewSyncer(s.client, s.subnets, head.Header.Revision).SyncBase(ctx)
	for resp := range pages {
		for _, kv := range resp.Kvs {
			out = append(out, lease.Record{Key: s.leaseKey(kv.Key), Value: kv.Value,
				Revision: kv.ModRevision, CreateRevision: kv.CreateRevision, StoreLeaseID: kv.Lease})
		}
	}
	if err := <-errc; err != nil {
		return nil, 0, err
	}
	return out, head.Header.Revision, nil
}

// Watch implements Store.
func (s *Store) Watch(ctx context.Context, fromRevision int64) <-chan lease.WatchResponse {
	out := make(chan lease.WatchResponse)
	go func() {
		defer close(out)
		ctx, cancel := context.WithCancel(ctx)
		defer cancel() // ends the etcd watch stream with us
		wch := s.client.Watch(clientv3.WithRequireLeader(ctx), s.subnets, clientv3.WithPrefix(), clientv3.WithRev(fromRevision+1))
		for resp := range wch {
			var wr lease.WatchResponse
			switch err := resp.Err(); {
			case resp.CompactRevision != 0 || errors.Is(err, rpctypes.ErrCompacted):
				wr.Err = fmt.Errorf("%w (at revision %d)", lease.ErrCompacted, resp.CompactRevision)
			case err != nil:
				wr.Err = err
			}
			for _, ev := range resp.Events {
				wr.Events = append(wr.Events, lease.RecordEvent{
					Record: lease.Record{Key: s.leaseKey(ev.Kv.Key), Value: ev.Kv.Value,
						Revision: ev.Kv.ModRevision, CreateRevision: ev.Kv.CreateRevision, StoreLeaseID: ev.Kv.Lease},
					Deleted: ev.Type == clientv3.EventTypeDelete,
				})
			}
			select {
			case out <- wr:
			case <-ctx.Done():
				return
			}
			if wr.Err != nil {
				return
			}
		}
	}()
	return out
}

// Create implements Store.
func (s *Store) Create(ctx context.Context, key string, value []byte, ttl time.Duration) (lease.Record, error) {
	return s.putIf(ctx, key, value, ttl, lease.ErrExists, 0, clientv3.Compare(clientv3.CreateRevision(s.subnets+key), "=", 0))
}

// CreateIfNoneSince implements Store. A compare over a range holds only
// when it holds for every key in it (and for none, on an empty range).
func (s *Store) CreateIfNoneSince(ctx context.Context, key string, value []byte, ttl time.Duration, listed int64) (lease.Record, error) {
	return s.putIf(ctx, key, value, ttl, lease.ErrExists, 0,
		clientv3.Compare(clientv3.CreateRevision(s.subnets+key), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(s.subnets), "<", listed+1).WithPrefix())
}

// Replace implements Store.
func (s *Store) Replace(ctx context.Context, old lease.Record, value []byte, ttl time.Duration) (lease.Record, error) {
	return s.putIf(ctx, old.Key, value, ttl, lease.ErrConflict, old.CreateRevision, clientv3.Compare(clientv3.ModRevision(s.subnets+old.Key), "=", old.Revision))
}

// putIf writes key if every cond holds; created is the key's create revision
// when it exists already (a Replace), 0 when the write creates it.
func (s *Store) putIf(ctx context.Context, key string, value []byte, ttl time.Duration, lost error, created int64, cond ...clientv3.Cmp) (lease.Record, error) {
	if ttl <= 0 {
		// A reservation: the key lives until someone deletes it.
		resp, err := s.client.Txn(ctx).If(cond...).Then(clientv3.OpPut(s.subnets+key, string(value))).Commit()
		if err == nil && !resp.Succeeded {
			err = lost
		}
		if err != nil {
			return lease.Record{}, err
		}
		return lease.Record{Key: key, Value: value, Revision: resp.Header.Revision, CreateRevision: cmp.Or(created, resp.Header.Revision)}, nil
	}
	grant, err := s.client.Grant(ctx, int64(max(ttl/time.Second, 1)))
	if err != nil {
		return lease.Record{}, err
	}
	resp, err := s.client.Txn(ctx).If(cond...).
		Then(clientv3.OpPut(s.subnets+key, string(value), clientv3.WithLease(grant.ID))).Commit()
	if err == nil && !resp.Succeeded {
		err = lost
	}
	if err != nil {
		// The TTL handle is useless now; drop it rather than let it linger.
		_, _ = s.client.Revoke(context.WithoutCancel(ctx), grant.ID)
		return lease.Record{}, err
	}
	return lease.Record{Key: key, Value: value, Revision: resp.Header.Revision, CreateRevision: cmp.Or(created, resp.Header.Revision),
		StoreLeaseID: int64(grant.ID)}, nil
}

// Renew implements Store.
func (s *Store) Renew(ctx context.Context, rec lease.Record) (time.Duration, error) {
	resp, err := s.client.KeepAliveOnce(ctx, clientv3.LeaseID(rec.StoreLeaseID))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return 0, fmt.Errorf("%w: %s", lease.ErrLeaseLost, rec.Key)
	}
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Expiry implements Store.
func (s *Store) Expiry(ctx context.Context, rec lease.Record) (time.Duration, error) {
	if rec.StoreLeaseID == 0 {
		return 0, nil
	}
	resp, err := s.client.TimeToLive(ctx, clientv3.LeaseID(rec.StoreLeaseID))
	if err != nil {
		return 0, err
	}
	if resp.TTL < 0 {
		return 0, fmt.Errorf("%w: %s", lease.ErrLeaseLost, rec.Key)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// Delete implements Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	_, err := s.client.Delete(ctx, s.subnets+key)
	return err
}

// Compact compacts etcd's history up to the current revision; tests use it
// to prove the watch survives compaction.
func (s *Store) Compact(ctx context.Context) error {
	rev, err := s.Revision(ctx)
	if err != nil {
		return err
	}
	_, err = s.client.Compact(ctx, rev)
	return err
}

// Endpoints are the etcd URLs the client uses.
func (s *Store) Endpoints() []string { return s.client.Endpoints() }

var _ lease.Diagnoser = (*Store)(nil)
