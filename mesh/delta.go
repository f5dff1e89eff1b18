package mesh

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"slices"

	"github.com/weftnet/weft/lease"
)

// Delta is what changed between the desired state a backend was last given
// and the new one, peer by peer: Old holds the previous version of every
// peer that changed or left, New the new version of every peer that came
// or changed. Network and Self are the same as in that last state; a
// change to either is always applied as a whole state.
type Delta struct {
	Network     netip.Prefix
	IPv6Network netip.Prefix
	Self        lease.Lease
	Old         []Peer
	New         []Peer
}

// Before is the part of the old state the delta replaces, as a Desired, so
// a backend can plan it with the same code as a whole state.
func (d Delta) Before() Desired {
	return Desired{Network: d.Network, IPv6Network: d.IPv6Network, Self: d.Self, Peers: d.Old}
}

// After is the part of the new state the delta brings, as a Desired.
func (d Delta) After() Desired {
	return Desired{Network: d.Network, IPv6Network: d.IPv6Network, Self: d.Self, Peers: d.New}
}

// IPv6Half is the delta's IPv6 half, shaped as Desired.IPv6Half shapes a
// state: what a backend instance driving a dual-stack network's IPv6
// device applies.
func (d Delta) IPv6Half() Delta {
	before, after := d.Before().IPv6Half(), d.After().IPv6Half()
	return Delta{Network: before.Network, Self: before.Self, Old: before.Peers, New: after.Peers}
}

// DeltaApplier is an Applier that can also apply one change on its own,
// at a cost that does not grow with the number of peers: it trusts that
// the data path still holds what the last successful apply put there (the
// Reconciler's resync applies the whole state to heal drift) and touches only
// the entries of the peers in the Delta.
type DeltaApplier interface {
	Applier
	// ApplyDelta applies d; ErrWholeApply asks the Reconciler for a whole
	// Apply instead (for a change that is not local to the delta's peers).
	ApplyDelta(ctx context.Context, d Delta) error
}

// ErrWholeApply is what ApplyDelta returns when only a whole apply of the
// desired state can be correct. It is a signal, not a failure: the
// Reconciler applies the whole state at once and counts no error.
var ErrWholeApply = errors.New("the change needs the whole desired state applied")

// sameSelf reports whether this host's own lease changed in a way the
// desired state depends on (its subnet, address or backend data, or what
// it publishes of its peers: a pair behind NAT goes direct or through a
// relay by what both ends publish, and both must change at once).
func sameSelf(a, b lease.Lease) bool {
	return a.Subnet == b.Subnet && a.Attrs.PublicIP == b.Attrs.PublicIP &&
		a.Attrs.BackendType == b.Attrs.BackendType && bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) &&
		a.IPv6Subnet == b.IPv6Subnet && a.Attrs.PublicIPv6Addr() == b.Attrs.PublicIPv6Addr() && bytes.Equal(a.Attrs.BackendV6Data(), b.Attrs.BackendV6Data()) &&
		slices.Equal(a.Attrs.Seen(), b.Attrs.Seen()) && slices.Equal(a.Attrs.Reach(), b.Attrs.Reach())
}

func samePeer(a, b Peer) bool {
	return a.Subnet == b.Subnet && a.PublicIP == b.PublicIP && a.BackendType == b.BackendType && a.Path == b.Path && bytes.Equal(a.BackendData, b.BackendData) &&
		a.IPv6Subnet() == b.IPv6Subnet() && a.PublicIPv6() == b.PublicIPv6() && bytes.Equal(a.BackendV6Data(), b.BackendV6Data()) &&
		slices.EqualFunc(a.Alternatives(), b.Alternatives(), func(x, y lease.PathAttrs) bool {
			return x.BackendType == y.BackendType && bytes.Equal(x.BackendData, y.BackendData) && bytes.Equal(x.BackendV6Data, y.BackendV6Data)
		}) && slices.Equal(a.Seen(), b.Seen()) && slices.Equal(a.Reach(), b.Reach())
}

// diff turns the changed keys into a Delta against the model and the skip
// reasons that changed (Reason "" for a lease no longer skipped), and
// updates the model to the new state. lookup
// returns the current valid lease at a key.
func (m *model) diff(keys []string, lookup func(string) (lease.Lease, bool), cfg *lease.Config, pref Preference, admit Admit) (Delta, []Skipped) {
	d := Delta{Network: m.network, IPv6Network: m.network6, Self: m.self}
	var skips []Skipped
	for _, key := range keys {
		var now Peer
		isPeer, reason := false, ""
		if l, ok := lookup(key); ok {
			p, r, isSelf := classify(m.self, l, cfg, pref, admit)
			isPeer, reason = !isSelf && r == "", r
			now = p
		}
		if reason != m.skipped[key] {
			skips = append(skips, Skipped{Key: key, Reason: reason})
			if reason == "" {
				delete(m.skipped, key)
			} else {
				m.skipped[key] = reason
			}
		}
		old, wasPeer := m.peer(key)
		if wasPeer && isPeer && samePeer(*old, now) {
			continue
		}
		if wasPeer {
			d.Old = append(d.Old, *old)
			if !isPeer {
				m.remove(key)
			}
		}
		if isPeer {
			d.New = append(d.New, now)
			m.put(key, &now)
		}
	}
	return d, skips
}

// empty reports whether the delta changes no peer.
func (d Delta) empty() bool { return len(d.Old) == 0 && len(d.New) == 0 }

// changedPeers are the peers of old that are not in m as they were (gone)
// and those of m that old lacks or held otherwise (added); old nil is an
// empty state, and then added is m's own peers, not a copy of them.
func changedPeers(old, m *model) (gone, added []Peer) {
	if old == nil {
		return nil, m.base
	}
	old.each(func(p *Peer) {
		if now, ok := m.peer(p.Key); !ok || !samePeer(*p, *now) {
			gone = append(gone, *p)
		}
	})
	m.each(func(p *Peer) {
		if was, ok := old.peer(p.Key); !ok || !samePeer(*was, *p) {
			added = append(added, *p)
		}
	})
	return gone, added
}
