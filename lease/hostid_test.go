package lease_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// TestClaimRecognisesHostByID: a host that comes back at another address
// finds its lease by its host ID and keeps its subnet, the lease rewritten
// in place with the new address; a lease without an ID (a flannel host's)
// is still recognised by PublicIP alone, and so is this host's lease when
// its ID file was lost (its subnet file names the subnet); a lease that
// moved away with its host is not the next host's at that address, and a
// lease at this host's address with another host's ID is that host's.
func TestClaimRecognisesHostByID(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
		id := keys.HostID{1, 2, 3}
		before := hostAttrs(1)
		before.HostID = id
		first, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: before, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		moved := hostAttrs(2)
		moved.HostID = id
		again, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: moved, TTL: time.Hour})
		if err != nil || again.Subnet != first.Subnet {
			t.Fatalf("after an address change: %s %v, want %s kept", again.Subnet, err, first.Subnet)
		}
		if recs, _, _ := s.List(ctx); len(recs) != 1 || string(recs[0].Value) != string(moved.Encode()) {
			t.Errorf("store holds %v, want one lease with the new address", recs)
		}
		// Another host (another ID) now at the first address: a lease of
		// its own.
		other := hostAttrs(1)
		other.HostID = keys.HostID{9}
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: other, TTL: time.Hour}); err != nil || l.Subnet == first.Subnet {
			t.Errorf("another host at the old address: %s %v, want a subnet of its own", l.Subnet, err)
		}
		// Another host at this host's address (behind a NAT with the same
		// private address at another site): a lease of its own, this
		// host's left alone.
		twin := moved
		twin.HostID = keys.HostID{6}
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: twin, TTL: time.Hour}); err != nil || l.Subnet == first.Subnet {
			t.Errorf("another host at this host's address: %s %v, want a subnet of its own", l.Subnet, err)
		}
		// This host's ID file was lost (a new ID, the same address): its
		// lease is still found at its address, the subnet its subnet file
		// names.
		lost := moved
		lost.HostID = keys.HostID{5}
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: lost, TTL: time.Hour, Previous: first.Subnet}); err != nil ||
			l.Subnet != first.Subnet {
			t.Errorf("after the ID file was lost: %s %v, want %s kept", l.Subnet, err, first.Subnet)
		}
		// A lease without an ID, at this host's address: recognised by
		// PublicIP, as flannel does.
		flannelKey := freeKeys(t, s, 200, 1)[0]
		if _, err := s.Create(ctx, flannelKey, hostAttrs(3).Encode(), time.Hour); err != nil {
			t.Fatal(err)
		}
		withID := hostAttrs(3)
		withID.HostID = keys.HostID{7}
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: withID, TTL: time.Hour}); err != nil || l.Key() != flannelKey {
			t.Errorf("a flannel lease at this host's address: %s %v, want it taken over", l.Subnet, err)
		}
	})
}

// TestDuplicateHostID: two live hosts with one host ID (a copied disk)
// would rewrite one lease in turn. The one at the lower address keeps it;
// the other's holder stops with ErrDuplicateHostID; both name the file to
// delete.
func TestDuplicateHostID(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`)
		id := keys.HostID{4, 2}
		low, high := hostAttrs(1), hostAttrs(2)
		low.HostID, high.HostID = id, id
		lowReq := lease.ClaimRequest{Config: cfg, Attrs: low, TTL: time.Hour, HostIDFile: "/var/lib/weft/host-id"}
		l, err := lease.Claim(ctx, s, lowReq)
		if err != nil {
			t.Fatal(err)
		}
		var lowLogs, highLogs syncBuffer
		lowHolder := lease.NewHolder(s, lowReq, l, time.Minute, testLogger(&lowLogs))
		go lowHolder.Run(ctx)
		// The copy starts: it takes the lease as its own (an address change,
		// as far as it can tell).
		highReq := lowReq
		highReq.Attrs = high
		h, err := lease.Claim(ctx, s, highReq)
		if err != nil || h.Subnet != l.Subnet {
			t.Fatalf("the copy's claim: %s %v", h.Subnet, err)
		}
		highHolder := lease.NewHolder(s, highReq, h, time.Minute, testLogger(&highLogs))
		done := make(chan error, 1)
		go func() { done <- highHolder.Run(ctx) }()
		lowHolder.Verify()
		waitFor(t, "the lease back with the host at the lower address", func() bool {
			r, ok, _ := s.Get(ctx, l.Key())
			return ok && string(r.Value) == string(low.Encode())
		})
		highHolder.Verify()
		select {
		case err := <-done:
			if !errors.Is(err, lease.ErrDuplicateHostID) || !strings.Contains(err.Error(), "/var/lib/weft/host-id") {
				t.Errorf("the copy's holder ended with %v, want ErrDuplicateHostID naming the file", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the copy's holder did not stop\n%s", highLogs.String())
		}
		if !strings.Contains(lowLogs.String(), "another live host has this host's ID") {
			t.Errorf("the host keeping the lease did not say so:\n%s", lowLogs.String())
		}
		time.Sleep(300 * time.Millisecond)
		if r, _, _ := s.Get(ctx, l.Key()); string(r.Value) != string(low.Encode()) {
			t.Errorf("lease = %s, want the lower address's", r.Value)
		}
	})
}
