package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/weftnet/weft/keys"
)

// ErrNoFreeSubnet means every subnet of the pool is leased.
var ErrNoFreeSubnet = errors.New("no free subnet")

// DefaultTTL is how long a lease lives without renewal, as in flannel.
const DefaultTTL = 24 * time.Hour

// maxClaimRounds bounds how often Claim re-reads the store after losing a
// race; each loss means another host got a subnet, so progress is made.
const maxClaimRounds = 1000

// ClaimRequest says what a host wants to lease.
type ClaimRequest struct {
	Config *Config
	Attrs  Attrs
	// Previous is the subnet this host had before (from the subnet file);
	// preferred when it is free and fits. Zero when unknown.
	Previous netip.Prefix
	// PreviousIPv6 is the IPv6 subnet this host had before, on a dual-stack
	// network (FLANNEL_IPV6_SUBNET); preferred likewise.
	PreviousIPv6 netip.Prefix
	// TTL of the lease; DefaultTTL when zero.
	TTL time.Duration
	// HostIDFile is where Attrs.HostID is kept, named when another live
	// host turns out to have the same ID.
	HostIDFile string
	// Identity signs the lease (see Sign); a lease with this host's ID is
	// taken as its own only when signed by it. Zero: the lease is written
	// unsigned and one with this host's ID is its own (before identities).
	Identity keys.Identity
	// AdoptUnsigned takes an unsigned lease with this host's ID as its
	// own: the first start after an upgrade from a weft that did not sign
	// (the identity was just made), so a rolling upgrade keeps every
	// subnet. It is never set otherwise: anyone can write an unsigned
	// lease with a host's ID.
	AdoptUnsigned bool
}

// value is what the host writes as its lease under key: its attributes,
// signed by its identity when it has one.
func (req ClaimRequest) value(key string) []byte {
	if req.Identity.IsZero() {
		return req.Attrs.Encode()
	}
	return Sign(req.Identity, key, req.signedAttrs().Encode())
}

// signedAttrs are the attributes as the lease holds them: naming the
// identity that signs it, and when (to SignEvery, so the value this host
// writes stays the same bytes meanwhile).
func (req ClaimRequest) signedAttrs() Attrs {
	attrs := req.Attrs
	if !req.Identity.IsZero() {
		attrs.Identity = req.Identity.Public()
		attrs.SignedAt = time.Now().Truncate(SignEvery).Unix()
	}
	return attrs
}

// own reports whether l, which carries this host's ID, is this host's
// lease: signed by its identity (or unsigned, on the first start after an
// upgrade; or any, for a host without an identity).
func (req ClaimRequest) own(l Lease) bool {
	if req.Identity.IsZero() {
		return true
	}
	return signedByOrAdopted(l, req.Identity.Public(), req.AdoptUnsigned)
}

func signedByOrAdopted(l Lease, identity keys.IdentityKey, adoptUnsigned bool) bool {
	if l.Signed {
		return l.SignedBy(identity)
	}
	return adoptUnsigned
}

// Owns reports whether l is the lease of the host whose own attributes
// are self: the same host (its ID, or else its address: SameHost) and,
// when l carries self's ID and self names an identity, signed by it (an
// unsigned one only when adoptUnsigned: the first start after an upgrade
// from a weft that did not sign). Anyone who can write etcd can copy a
// host's ID into a lease; nobody else can sign one with its identity.
func Owns(self Attrs, l Lease, adoptUnsigned bool) bool {
	if !l.Attrs.SameHost(self) {
		return false
	}
	if self.Identity.IsZero() || self.HostID.IsZero() || l.Attrs.HostID != self.HostID {
		return true
	}
	return signedByOrAdopted(l, self.Identity, adoptUnsigned)
}

// Claim leases a subnet for req.Attrs.PublicIP and returns it. In order of
// preference: the lease this host already holds in the store (found by
// PublicIP; a reservation, written without a TTL, stays without one, as in
// flannel), req.Previous, then a random free subnet. A lease of this host
// that no longer fits the config is deleted, as flannel does. Writes are
// atomic create-if-absent-and-no-lease-created-since-the-list (or
// compare-and-swap for an existing lease); a lost race is retried with
// fresh data, so two hosts never share a subnet, dual-stack ones included
// (whose keys differ when only their IPv6 halves do).
func Claim(ctx context.Context, store Store, req ClaimRequest) (Lease, error) {
	ttl := req.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	for range maxClaimRounds {
		records, listed, err := store.List(ctx)
		if err != nil {
			return Lease{}, fmt.Errorf("listing leases: %w", err)
		}
		taken := make([]netip.Prefix, 0, len(records))
		var taken6 []netip.Prefix
		// mine is this host's lease: the one with its host ID, else the
		// one at its address (a flannel host's lease, or this host's when
		// its ID file was lost and its subnet file still names it: the
		// subnet is kept, as flannel keeps it).
		var mine, atAddress *Record
		previous, previous6 := req.Previous, req.PreviousIPv6
		for i, rec := range records {
			subnet, subnet6, err := ParseSubnetKeys(rec.Key)
			if err != nil {
				continue
			}
			// Only a lease that may be this host's is acted on beyond its
			// key: only such a lease's signature is checked here (the
			// watch checks every one; checking all here too verified
			// each lease twice at a start).
			l, err := decodeLease(rec.Key, rec.Value, false)
			if err == nil && (!req.Attrs.HostID.IsZero() && l.Attrs.HostID == req.Attrs.HostID || l.Attrs.SameAddress(req.Attrs)) {
				l, err = DecodeLease(rec.Key, rec.Value)
			}
			if err == nil && Owns(req.signedAttrs(), l, req.AdoptUnsigned) && (!req.Config.Fits(subnet) || !req.Config.Fits6(subnet6)) {
				// This host's lease from an older config: it frees the subnet.
				if err := store.Delete(ctx, rec.Key); err != nil {
					return Lease{}, fmt.Errorf("deleting this host's lease %s, which no longer fits the config: %w", rec.Key, err)
				}
				if subnet.IsValid() && req.Config.Fits(subnet) {
					// Only the IPv6 half changed (IPv6 turned on or
					// off): keep the IPv4 subnet, so containers keep
					// their addresses. flannel would pick anew.
					previous = subnet
				}
				continue
			}
			// Only a SubnetLen subnet inside the Network can hold a peer
			// (Compute skips the rest), so only such a key takes a subnet:
			// a junk key such as 0.0.0.0-1 must not fill the whole pool.
			if req.Config.EnableIPv4 && subnet.Bits() == req.Config.SubnetLen && req.Config.Network.Contains(subnet.Addr()) {
				taken = append(taken, subnet)
			}
			if req.Config.EnableIPv6 && subnet6.Bits() == req.Config.IPv6SubnetLen && req.Config.IPv6Network.Contains(subnet6.Addr()) {
				taken6 = append(taken6, subnet6)
			}
			myID := err == nil && !req.Attrs.HostID.IsZero() && l.Attrs.HostID == req.Attrs.HostID
			switch {
			case err != nil:
			case myID && !req.own(l):
				// This host's ID in a lease it did not sign: anyone who
				// can write etcd can copy an ID; it is another lease.
			case mine == nil && myID:
				mine = &records[i]
			case atAddress == nil && l.Attrs.SameAddress(req.Attrs) && (l.Attrs.HostID.IsZero() || req.Attrs.HostID.IsZero() ||
				subnet == req.Previous):
				// A lease at this address with another host's ID is that
				// host's (two hosts behind NATs with one private address),
				// unless it holds the subnet this host's subnet file names:
				// then this host lost its ID file.
				atAddress = &records[i]
			}
		}
		if mine == nil {
			mine = atAddress
		}
		var rec Record
		switch {
		case mine != nil && mine.StoreLeaseID == 0:
			rec, err = store.Replace(ctx, *mine, req.value(mine.Key), 0) // a reservation stays one
		case mine != nil:
			rec, err = store.Replace(ctx, *mine, req.value(mine.Key), ttl)
		default:
			subnet, subnet6, pickErr := pickSubnets(req.Config, previous, previous6, taken, taken6)
			if pickErr != nil {
				return Lease{}, pickErr
			}
			key := DualSubnetKey(subnet, subnet6)
			rec, err = store.CreateIfNoneSince(ctx, key, req.value(key), ttl, listed)
		}
		if errors.Is(err, ErrExists) || errors.Is(err, ErrConflict) {
			continue // another host won this subnet; read again and pick anew
		}
		if err != nil {
			return Lease{}, fmt.Errorf("writing lease: %w", err)
		}
		// A dual-stack lease this host held (as flannel) keeps its key.
		subnet, subnet6, _ := ParseSubnetKeys(rec.Key)
		l := Lease{Subnet: subnet, IPv6Subnet: subnet6, Attrs: req.signedAttrs(), Revision: rec.Revision, CreateRevision: rec.CreateRevision,
			StoreLeaseID: rec.StoreLeaseID, Signed: !req.Identity.IsZero()}
		if rec.StoreLeaseID != 0 {
			l.Expiration = time.Now().Add(ttl)
		}
		return l, nil
	}
	return Lease{}, fmt.Errorf("claiming a subnet: lost %d races in a row; is something rewriting the leases?", maxClaimRounds)
}

// pickSubnets chooses the subnets of a new lease: previous (and
// previous6) when free and fitting, else random free ones; an IPv6 subnet
// only on a dual-stack network.
func pickSubnets(cfg *Config, previous, previous6 netip.Prefix, taken, taken6 []netip.Prefix) (netip.Prefix, netip.Prefix, error) {
	subnet, ok := previous, !cfg.EnableIPv4 || previous.IsValid() && cfg.Fits(previous) && !overlapsAny(previous, taken)
	if !cfg.EnableIPv4 {
		subnet = netip.Prefix{}
	}
	if !ok {
		if subnet, ok = pickFree(cfg, taken); !ok {
			return subnet, netip.Prefix{}, fmt.Errorf("%w in network %s: all %d subnets of /%d between %s and %s are leased",
				ErrNoFreeSubnet, cfg.Network, cfg.Subnets(), cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax)
		}
	}
	if !cfg.EnableIPv6 {
		return subnet, netip.Prefix{}, nil
	}
	if previous6.IsValid() && cfg.Fits6(previous6) && !overlapsAny(previous6, taken6) {
		return subnet, previous6, nil
	}
	subnet6, ok := pickFree6(cfg, taken6)
	if !ok {
		return subnet, subnet6, fmt.Errorf("%w in IPv6Network %s: every subnet of /%d between %s and %s is leased",
			ErrNoFreeSubnet, cfg.IPv6Network, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax)
	}
	return subnet, subnet6, nil
}

func overlapsAny(subnet netip.Prefix, taken []netip.Prefix) bool {
	for _, t := range taken {
		if t.Overlaps(subnet) {
			return true
		}
	}
	return false
}

// pickFree chooses a random subnet between SubnetMin and SubnetMax that
// overlaps no taken one. Random, not first-free, so racing hosts rarely
// collide.
func pickFree(cfg *Config, taken []netip.Prefix) (netip.Prefix, bool) {
	total := cfg.Subnets()
	nth := func(i int) netip.Prefix {
		return netip.PrefixFrom(u32ToAddr(addrToU32(cfg.SubnetMin)+uint32(i)<<(32-cfg.SubnetLen)), cfg.SubnetLen)
	}
	// Sparse pools: random probes find a free subnet fast.
	if len(taken) < total/2 {
		for range 64 {
			if s := nth(rand.IntN(total)); !overlapsAny(s, taken) {
				return s, true
			}
		}
	}
	// Dense pools: enumerate (bounded by the pool, at most 2^(30-8) here only
	// for absurd configs) and choose among the free ones.
	occupied := make(map[netip.Prefix]bool, len(taken))
	var wide []netip.Prefix
	for _, t := range taken {
		if t.Bits() == cfg.SubnetLen {
			occupied[t] = true
		} else {
			wide = append(wide, t)
		}
	}
	var free []netip.Prefix
	for i := range total {
		s := nth(i)
		if !occupied[s] && !overlapsAny(s, wide) {
			free = append(free, s)
		}
	}
	if len(free) == 0 {
		return netip.Prefix{}, false
	}
	return free[rand.IntN(len(free))], true
}
