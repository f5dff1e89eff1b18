package lease

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Holder keeps this host's lease alive: it renews the TTL ahead of expiry
// and, when the lease is gone from the store (deleted by hand, expired during
// an outage), claims it again — the same subnet whenever it is still free.
// It never gives up and never exits on lease loss.
type Holder struct {
	store Store
	req   ClaimRequest
	// RenewMargin is how long before expiry the TTL is renewed.
	renewMargin time.Duration
	log         *slog.Logger
	check       chan struct{}
	changed     chan struct{}
	// conflicts counts leases taken back from another writer.
	conflicts atomic.Uint64
	// takeBacks are when the last take-backs were (contestWindow),
	// guarded by mu: a foreign write that recurs is taken back less and
	// less often (contestWait) instead of in a write war with etcd.
	takeBacks []time.Time

	mu      sync.Mutex
	current Lease
}

// Conflicts counts the times this host's lease was overwritten by another
// writer and taken back (weft_lease_conflicts_total).
func (h *Holder) Conflicts() uint64 { return h.conflicts.Load() }

// NewHolder takes over a lease just claimed with req.
func NewHolder(store Store, req ClaimRequest, current Lease, renewMargin time.Duration, log *slog.Logger) *Holder {
	if req.TTL <= 0 {
		req.TTL = DefaultTTL
	}
	// The first claim (before the holder) adopted an unsigned lease of
	// this host if there was one; later claims never do.
	req.AdoptUnsigned = false
	return &Holder{store: store, req: req, current: current, renewMargin: renewMargin,
		log: log.With("component", "lease"), check: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
}

// Current returns the lease as last written.
func (h *Holder) Current() Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.current
}

// Changed fires after the lease was re-claimed (its subnet may differ).
func (h *Holder) Changed() <-chan struct{} { return h.changed }

// Verify asks the holder to check the lease in the store now, e.g. because
// the watch saw it deleted.
func (h *Holder) Verify() {
	select {
	case h.check <- struct{}{}:
	default:
	}
}

// SetAttrs changes what the lease publishes (a new WireGuard key) and
// rewrites it on the next check. The sightings stay (SetSeen sets them).
func (h *Holder) SetAttrs(attrs Attrs) {
	h.mu.Lock()
	attrs = attrs.WithSightings(h.req.Attrs.Seen(), h.req.Attrs.Reach())
	if attrs.Cert() == nil {
		attrs = attrs.WithCert(h.req.Attrs.Cert())
	}
	h.req.Attrs = attrs
	h.mu.Unlock()
	h.Verify()
}

// SetBackendData changes the data the lease publishes for the backend
// whose Backend() name is backend (its BackendType, or its path in
// WeftAlso during a live switch) and rewrites it on the next check; it
// reports whether the data changed. A lease without that backend is left
// alone.
func (h *Holder) SetBackendData(backend string, data json.RawMessage) bool {
	h.mu.Lock()
	a := h.req.Attrs
	changed := false
	switch {
	case a.Backend() == backend && len(a.BackendData) > 0: // an IPv6-only lease publishes none
		changed = !bytes.Equal(a.BackendData, data)
		a.BackendData = data
	default:
		also := slices.Clone(a.Also())
		for i := range also {
			if also[i].BackendType == backend && len(also[i].BackendData) > 0 && !bytes.Equal(also[i].BackendData, data) {
				also[i].BackendData, changed = data, true
			}
		}
		if changed {
			a = a.WithAlso(also)
		}
	}
	if changed {
		h.req.Attrs = a
	}
	h.mu.Unlock()
	if changed {
		h.Verify()
	}
	return changed
}

// SetCert changes the membership certificate the lease publishes
// (WeftCert) and rewrites it on the next check; it reports whether it
// changed.
func (h *Holder) SetCert(c *Certificate) bool {
	h.mu.Lock()
	old := h.req.Attrs.Cert()
	same := old == c || old != nil && c != nil && old.Text == c.Text
	if !same {
		h.req.Attrs = h.req.Attrs.WithCert(c)
	}
	h.mu.Unlock()
	if !same {
		h.Verify()
	}
	return !same
}

// SetSeen changes the sightings and the reach the lease publishes
// (WeftSeen, WeftReach) and rewrites it on the next check; it reports
// whether they changed.
func (h *Holder) SetSeen(seen []Sighting, reach []string) bool {
	h.mu.Lock()
	same := slices.Equal(h.req.Attrs.Seen(), seen) && slices.Equal(h.req.Attrs.Reach(), reach)
	if !same {
		h.req.Attrs = h.req.Attrs.WithSightings(slices.Clone(seen), slices.Clone(reach))
	}
	h.mu.Unlock()
	if !same {
		h.Verify()
	}
	return !same
}

// attemptTimeout bounds one renewal attempt: a third of the TTL, at most
// 10 s, at least 1 s.
func (h *Holder) attemptTimeout() time.Duration {
	return min(max(h.req.TTL/3, time.Second), 10*time.Second)
}

// renewAfter is when to renew a TTL: margin before expiry (flannel's
// -subnet-lease-renew-margin), but never sooner than a third of the TTL, so
// a TTL shorter than the margin renews a few times per TTL instead of in a
// hot loop.
func (h *Holder) renewAfter() time.Duration {
	return max(h.req.TTL-h.renewMargin, h.req.TTL/3)
}

// Run renews and re-claims until ctx ends.
func (h *Holder) Run(ctx context.Context) error {
	backoff := NewBackoff(time.Second, 30*time.Second)
	next := h.renewAfter()
	failed := 0     // attempts failed in a row: an outage is said once
	putOff := false // a take-back was put off: the timer is for it, not a renewal
	var saidContested time.Time
	for {
		timer := time.NewTimer(next)
		renew := false
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
			renew = !putOff
		case <-h.check:
			timer.Stop()
		}
		// Each attempt is bounded: a call stuck on an etcd member that
		// went away (its connection has not failed yet) must not outlive
		// the TTL; the next attempt goes to another member.
		actx, cancel := context.WithTimeout(ctx, h.attemptTimeout())
		err := h.refresh(actx, renew)
		cancel()
		putOff = errors.Is(err, ErrContested)
		if err == nil {
			if failed > 0 {
				h.log.Info("lease renewed again", "subnet", h.Current().Subnet, "failed_attempts", failed)
			}
			failed = 0
			backoff.Reset()
			next = h.renewAfter()
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrDuplicateHostID) {
			return err
		}
		if errors.Is(err, ErrContested) {
			// Put off, not failed: come back when the wait is over.
			next = max(h.contestWait(time.Now()), 100*time.Millisecond)
			if time.Since(saidContested) > contestWindow {
				saidContested = time.Now()
				h.log.Warn("another writer keeps overwriting this host's lease; taking it back less often (check who can write etcd)",
					"subnet", h.Current().Subnet, "err", err)
			}
			continue
		}
		// Several tries fit in a short TTL: each may land on another
		// etcd member, and one live member is enough.
		next = min(backoff.Next(), max(h.req.TTL/6, 500*time.Millisecond))
		failed++
		level := slog.LevelWarn
		if failed > 1 {
			level = slog.LevelDebug // said at the first failure
		}
		h.log.Log(ctx, level, "cannot renew lease; the data path stays as it is; retrying", "subnet", h.Current().Subnet, "err", err, "retry_in", next, "attempt", failed)
	}
}

// refresh renews the TTL (renew) or checks the stored lease still is ours
// with our attributes, re-claiming it when it is not.
func (h *Holder) refresh(ctx context.Context, renew bool) error {
	cur := h.Current()
	h.mu.Lock()
	req := h.req
	h.mu.Unlock()
	rec := Record{Key: cur.Key(), Revision: cur.Revision, StoreLeaseID: cur.StoreLeaseID}
	if renew && cur.StoreLeaseID == 0 {
		// A reservation has no TTL to renew: only check it is still ours.
		renew = false
	}
	if renew && !req.Identity.IsZero() && time.Since(time.Unix(cur.Attrs.SignedAt, 0)) > ResignAfter {
		// Signed long ago: written again (same subnet, a new signature),
		// so no host refuses it as too old (MaxSignedAge).
		renew = false
	}
	if renew {
		_, err := h.store.Renew(ctx, rec)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrLeaseLost) {
			return err
		}
	}
	updating := false // our own record, with attributes changed since (SetAttrs)
	if !renew {
		ours, unchanged, err := h.stillOurs(ctx, cur, req)
		if err != nil || ours {
			return err
		}
		updating = unchanged
		if taken, err := h.takeBack(ctx, cur, req); err != nil || taken {
			return err
		}
	}
	req.Previous, req.PreviousIPv6 = cur.Subnet, cur.IPv6Subnet
	l, err := Claim(ctx, h.store, req)
	if err != nil {
		return err
	}
	if l.Subnet != cur.Subnet || l.IPv6Subnet != cur.IPv6Subnet {
		h.log.Error("our subnet was taken by another host while our lease was gone; moved to a new one",
			"old_key", cur.Key(), "new_key", l.Key())
	} else if updating {
		h.log.Info("lease rewritten with new attributes", "key", l.Key())
	} else {
		h.log.Info("lease was lost and has been claimed again", "key", l.Key())
	}
	h.adopt(l)
	return nil
}

// adopt makes l the lease held and tells Changed.
func (h *Holder) adopt(l Lease) {
	h.mu.Lock()
	h.current = l
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

// takeBack restores this host's lease when another writer overwrote it in
// place with another PublicIP: weft never does that itself (it only
// creates absent keys or rewrites its own), so the write is foreign, and
// giving the subnet up would hand this host's traffic to the writer. The
// lease goes back with a compare-and-swap on the overwritten revision and
// the subnet stays. A key deleted and created again (another create
// revision: the lease expired and another host claimed it) or a key
// without TTL (a reservation an operator wrote) is followed instead.
func (h *Holder) takeBack(ctx context.Context, cur Lease, req ClaimRequest) (bool, error) {
	r, ok, err := h.store.Get(ctx, cur.Key())
	if err != nil || !ok || cur.CreateRevision == 0 || r.CreateRevision != cur.CreateRevision || r.StoreLeaseID == 0 {
		return false, err
	}
	foreign, err := DecodeLease(r.Key, r.Value)
	if err == nil && r.Revision != cur.Revision && !req.Attrs.HostID.IsZero() && foreign.Attrs.HostID == req.Attrs.HostID &&
		(req.Identity.IsZero() || foreign.SignedBy(req.Identity.Public())) {
		// Signed by this host's own identity: a copy of this host (its
		// identity files on a machine with the same machine ID) is live.
		// Anyone else's write with this host's ID is taken back below.
		return h.duplicateHostID(ctx, r, cur, foreign, req)
	}
	if err == nil && foreign.Attrs.SameHost(req.Attrs) && r.Revision == cur.Revision {
		// What this weftd wrote, with attributes changed since (a key
		// rotated): rewritten by Claim, no conflict. The same PublicIP
		// at a revision this weftd did not write is someone else's write
		// (another WireGuard key for this host's address): taken back and
		// counted as any overwrite.
		return false, nil
	}
	if wait := h.contestWait(time.Now()); wait > 0 {
		return false, fmt.Errorf("%w: taken back %d times in %s; the next in %s", ErrContested, len(h.takeBackTimes()), contestWindow, wait.Round(time.Second))
	}
	h.noteTakeBack(time.Now())
	h.conflicts.Add(1)
	h.log.Error("this host's lease was overwritten by another writer; taking it back (check who can write etcd)",
		"key", r.Key, "their_public_ip", foreign.Attrs.PublicIP, "their_backend_data", string(foreign.Attrs.BackendData))
	rec, err := h.store.Replace(ctx, r, req.value(r.Key), req.TTL)
	if err != nil {
		return false, err
	}
	l := Lease{Subnet: cur.Subnet, IPv6Subnet: cur.IPv6Subnet, Attrs: req.signedAttrs(), Expiration: time.Now().Add(req.TTL), Revision: rec.Revision,
		CreateRevision: rec.CreateRevision, StoreLeaseID: rec.StoreLeaseID, Signed: !req.Identity.IsZero()}
	h.adopt(l)
	return true, nil
}

// ErrContested is a take-back put off: another writer overwrote this
// host's lease again soon after the last take-backs.
var ErrContested = errors.New("this host's lease keeps being overwritten by another writer")

// contestWindow is how far back take-backs count; contestFree is how
// many in it are taken back at once; each one more doubles the wait
// before the next, from a second up to contestMaxWait.
const (
	contestWindow  = time.Minute
	contestFree    = 3
	contestMaxWait = 30 * time.Second
)

// contestWait is how long the next take-back waits at now: none while
// fewer than contestFree were made in contestWindow.
func (h *Holder) contestWait(now time.Time) time.Duration {
	recent := h.takeBackTimes()
	n := 0
	for _, t := range recent {
		if now.Sub(t) < contestWindow {
			n++
		}
	}
	if n < contestFree {
		return 0
	}
	wait := min(time.Second<<min(n-contestFree, 5), contestMaxWait)
	return max(recent[len(recent)-1].Add(wait).Sub(now), 0)
}

// takeBackTimes are the recent take-backs, oldest first.
func (h *Holder) takeBackTimes() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.takeBacks)
}

// noteTakeBack records a take-back at now, forgetting those out of the
// window.
func (h *Holder) noteTakeBack(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.takeBacks = slices.DeleteFunc(append(h.takeBacks, now), func(t time.Time) bool { return now.Sub(t) >= contestWindow })
}

// Contested reports whether a take-back of this host's lease is being
// put off now (status: a writer keeps overwriting it).
func (h *Holder) Contested() bool { return h.contestWait(time.Now()) > 0 }

// ErrDuplicateHostID ends the holder of one of two live hosts that share a
// host ID (a copied disk or image): they would rewrite one lease in turn.
var ErrDuplicateHostID = errors.New("another live host has this host's ID")

// duplicateHostID handles a foreign write that carries this host's own
// host ID: only another live host with the same ID writes that (this
// host's own writes are at revisions it knows). Both hosts see it; the one
// at the lower address keeps the lease, the other stops, and both say
// which file to delete.
func (h *Holder) duplicateHostID(ctx context.Context, r Record, cur, foreign Lease, req ClaimRequest) (bool, error) {
	fix := "delete " + req.HostIDFile + " on one of the two hosts and restart its weftd: it makes a new ID and claims a subnet of its own"
	h.conflicts.Add(1)
	mine, theirs := req.Attrs.publicIP(), foreign.Attrs.publicIP()
	if mine == theirs {
		mine, theirs = req.Attrs.PublicIPv6Addr(), foreign.Attrs.PublicIPv6Addr()
	}
	if mine.Compare(theirs) > 0 {
		h.log.Error("another live host has this host's ID (a copied disk or image?) and holds this lease; stopping", "key", r.Key,
			"host_id", req.Attrs.HostID, "their_public_ip", foreign.Attrs.PublicIP, "fix", fix)
		return false, fmt.Errorf("%w (%s, at %s): %s", ErrDuplicateHostID, req.Attrs.HostID, theirs, fix)
	}
	h.log.Error("another live host has this host's ID (a copied disk or image?); keeping the lease, the other host stops", "key", r.Key,
		"host_id", req.Attrs.HostID, "their_public_ip", foreign.Attrs.PublicIP, "fix", fix)
	rec, err := h.store.Replace(ctx, r, req.value(r.Key), req.TTL)
	if err != nil {
		return false, err
	}
	h.adopt(Lease{Subnet: cur.Subnet, IPv6Subnet: cur.IPv6Subnet, Attrs: req.signedAttrs(), Expiration: time.Now().Add(req.TTL), Revision: rec.Revision,
		CreateRevision: rec.CreateRevision, StoreLeaseID: rec.StoreLeaseID, Signed: !req.Identity.IsZero()})
	return true, nil
}

// stillOurs reports whether the store holds cur unchanged with req's
// attrs (ours), and whether it holds cur at our revision at all
// (unchanged: only the attributes we publish have changed since).
func (h *Holder) stillOurs(ctx context.Context, cur Lease, req ClaimRequest) (ours, unchanged bool, err error) {
	r, ok, err := h.store.Get(ctx, cur.Key())
	if err != nil || !ok {
		return false, false, err
	}
	unchanged = r.Revision == cur.Revision
	return unchanged && string(r.Value) == string(req.value(cur.Key())), unchanged, nil
}
