package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/mesh"
)

// SourceFilter is what a tunnel backend's filter of tunnel packets by
// source does (tunnelfilter.Filter): accept them only from the peer
// addresses it holds.
type SourceFilter interface {
	// Ensure puts the filter in place, keeping the addresses it holds.
	Ensure() error
	// InPlace reports whether the filter is there as Ensure makes it.
	InPlace() bool
	// Sync makes the addresses exactly want.
	Sync(want []netip.Addr) error
	// Update adds and removes addresses, one by one.
	Update(add, remove []netip.Addr) error
	// Drops counts the packets dropped, by source.
	Drops() (map[netip.Addr]uint64, error)
	// Remove takes the filter away.
	Remove() error
}

var _ SourceFilter = (*tunnelfilter.Filter)(nil)

// TunnelDropCounter is a backend that drops tunnel packets from sources
// that hold no lease, and counts them by source.
type TunnelDropCounter interface {
	TunnelDrops() map[netip.Addr]uint64
}

// FilterKeeper is a backend whose tunnel the source filter guards
// (FilterSources). The filter's table can go under it: `nft flush
// ruleset` (what Debian's nftables.service runs at start and reload, and
// any `nft -f` script that begins with a flush) takes it, and then the
// tunnel takes packets from anyone. KeepFilter puts it back, with the
// peer addresses the wrapper holds, when it is missing or differs; weftd
// runs it every -iptables-resync (KeepFilterEvery).
type FilterKeeper interface {
	// KeepFilter checks the filter and rewrites it when it is not in
	// place; restored says it was rewritten.
	KeepFilter() (restored bool, err error)
	// FilterInPlace reports whether the last check found the filter in
	// place or put it back (true before the first check).
	FilterInPlace() bool
}

// FilterSources wraps a tunnel backend (vxlan, ipip) so its tunnel accepts
// packets only from the PublicIP and PublicIPv6 of the peers it is given:
// the filter's addresses follow every whole apply and every delta (a
// delta changes only its peers' addresses), before the backend programs
// the peers.
// The backend's other capabilities (a dual stack's BackendV6Data) are
// found through the wrapper with As.
func FilterSources(b Backend, filter SourceFilter) Backend {
	return &sourceFiltered{Backend: b, filter: filter, entries: map[[16]byte]filterEntry{}}
}

// sourceFiltered is FilterSources' backend. entries hold how many peers
// use each address (two leases may name one host, an old lease beside its
// new one) and whether the filter holds it. A delta adds its new
// addresses at once; an address no peer uses any more leaves at the next
// whole apply (the resync): deleting set elements costs the kernel an RCU
// grace period (about 10 ms) that a lease's change need not wait for, and
// the address was a peer's a moment ago.
type sourceFiltered struct {
	Backend
	filter SourceFilter
	// missing is set while the last check found the filter gone and
	// could not put it back.
	missing atomic.Bool

	mu sync.Mutex
	// entries are keyed by the address's 16 bytes (IPv4 mapped): a map
	// without pointers (netip.Addr holds one) is not scanned by the
	// collector, and this one map is half the size of the two it
	// replaced (7 MB at 50,000 peers).
	entries map[[16]byte]filterEntry
}

var (
	_ mesh.DeltaApplier = (*sourceFiltered)(nil)
	_ TunnelDropCounter = (*sourceFiltered)(nil)
	_ FilterKeeper      = (*sourceFiltered)(nil)
	_ Wrapper           = (*sourceFiltered)(nil)
)

// Unwrap is the filtered backend.
func (s *sourceFiltered) Unwrap() []mesh.Applier { return []mesh.Applier{s.Backend} }

// peerAddrs are the underlay addresses peer p sends tunnel packets from.
func peerAddrs(p mesh.Peer) []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.PublicIP, p.PublicIPv6()} {
		if a.IsValid() && !a.IsUnspecified() {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Setup puts the filter in place before the tunnel's device.
func (s *sourceFiltered) Setup(ctx context.Context) error {
	if err := s.filter.Ensure(); err != nil {
		return fmt.Errorf("filtering tunnel packets by source (nftables table %s): %w; turn it off with -tunnel-source-filter=false", tunnelfilter.TableName, err)
	}
	return s.Backend.Setup(ctx)
}

// Cleanup removes the backend's data path and the filter with it.
func (s *sourceFiltered) Cleanup(ctx context.Context) error {
	return errors.Join(s.Backend.Cleanup(ctx), s.filter.Remove())
}

// filterEntry is what the wrapper knows of one peer address: how many
// peers use it, and whether the filter holds it.
type filterEntry struct {
	peers   int32
	present bool
}

// Apply makes the filter's addresses exactly the peers', then applies.
func (s *sourceFiltered) Apply(ctx context.Context, d mesh.Desired) error {
	entries := make(map[[16]byte]filterEntry, len(d.Peers))
	want := make([]netip.Addr, 0, len(d.Peers))
	for _, p := range d.Peers {
		for _, a := range peerAddrs(p) {
			e := entries[a.As16()]
			if e.peers == 0 {
				want = append(want, a)
			}
			e.peers++
			entries[a.As16()] = e
		}
	}
	var errs []error
	if err := s.filter.Sync(want); err != nil {
		errs = append(errs, fmt.Errorf("tunnel source filter: %w", err))
	} else {
		for k, e := range entries {
			e.present = true
			entries[k] = e
		}
	}
	s.mu.Lock()
	s.entries = entries
	s.mu.Unlock()
	return errors.Join(append(errs, s.Backend.Apply(ctx, d))...)
}

// ApplyDelta adds the addresses of the delta's new peers the filter does
// not hold, before the peers are programmed, then applies the delta.
func (s *sourceFiltered) ApplyDelta(ctx context.Context, d mesh.Delta) error {
	inner, ok := s.Backend.(mesh.DeltaApplier)
	if !ok {
		return mesh.ErrWholeApply
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var add []netip.Addr
	for _, p := range d.New {
		for _, a := range peerAddrs(p) {
			e := s.entries[a.As16()]
			if e.peers++; !e.present && !slices.Contains(add, a) {
				add = append(add, a)
			}
			s.entries[a.As16()] = e
		}
	}
	for _, p := range d.Old {
		for _, a := range peerAddrs(p) {
			e := s.entries[a.As16()]
			e.peers = max(e.peers-1, 0)
			switch {
			case e.peers > 0 || e.present:
				// One nobody uses leaves the filter at the next resync.
				s.entries[a.As16()] = e
			default:
				delete(s.entries, a.As16())
			}
		}
	}
	if err := s.filter.Update(add, nil); err != nil {
		// The next whole apply (a resync) puts the filter right.
		return errors.Join(fmt.Errorf("tunnel source filter: %w", err), inner.ApplyDelta(ctx, d))
	}
	for _, a := range add {
		e := s.entries[a.As16()]
		e.present = true
		s.entries[a.As16()] = e
	}
	return inner.ApplyDelta(ctx, d)
}

// TunnelDrops counts the tunnel packets dropped by source (those dropped
// within the last ten minutes); nil when the filter cannot be read.
func (s *sourceFiltered) TunnelDrops() map[netip.Addr]uint64 {
	drops, err := s.filter.Drops()
	if err != nil {
		return nil
	}
	return drops
}

// KeepFilter rewrites the filter when it is not in place, and fills it
// with every address its peers use: those the last whole apply and the
// deltas since gave it (an address no peer uses any more is left out, as
// the next whole apply would leave it).
func (s *sourceFiltered) KeepFilter() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filter.InPlace() {
		s.missing.Store(false)
		return false, nil
	}
	want := make([]netip.Addr, 0, len(s.entries))
	for k, e := range s.entries {
		if e.peers == 0 {
			delete(s.entries, k)
			continue
		}
		want = append(want, netip.AddrFrom16(k).Unmap())
	}
	err := s.filter.Ensure()
	if err == nil {
		err = s.filter.Sync(want)
	}
	for k, e := range s.entries {
		e.present = err == nil
		s.entries[k] = e
	}
	s.missing.Store(err != nil)
	if err != nil {
		return false, fmt.Errorf("tunnel source filter (nftables table %s) missing: %w", tunnelfilter.TableName, err)
	}
	return true, nil
}

// FilterInPlace reports whether the last check found the filter in place
// or put it back.
func (s *sourceFiltered) FilterInPlace() bool { return !s.missing.Load() }

// KeepFilterEvery runs k's KeepFilter every interval until ctx ends,
// saying in the log when it put the filter back and, once per outage,
// when it could not.
func KeepFilterEvery(ctx context.Context, k FilterKeeper, every time.Duration, log *slog.Logger) error {
	log = log.With("component", "tunnel-filter")
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
		restored, err := k.KeepFilter()
		switch {
		case err != nil && !failing:
			log.Error("the tunnel source filter is gone and cannot be put back: the tunnel takes packets from anyone; retrying", "err", err)
		case restored:
			log.Warn("the tunnel source filter was missing or changed (nft flush ruleset?): put back with its peers",
				"table", tunnelfilter.TableName)
		}
		failing = err != nil
	}
}
