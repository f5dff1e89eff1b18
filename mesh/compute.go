package mesh

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/weftnet/weft/lease"
)

// Skipped is a lease left out of the desired state, and why.
type Skipped struct {
	Key    string
	Reason string
}

// Desired is everything a backend needs to program this host: the whole
// Network, this host's own lease, and every valid peer sorted by subnet.
type Desired struct {
	Network netip.Prefix
	// IPv6Network is the IPv6 pool on a dual-stack network, else invalid.
	IPv6Network netip.Prefix
	// PeersNetwork holds the outside peers' addresses (invalid: none);
	// Outside are those peers, set on whole applies only.
	PeersNetwork netip.Prefix
	Outside      []lease.OutsidePeer
	Self         lease.Lease
	Peers        []Peer
	// Skipped lists leases that are not peers, for one warning each.
	Skipped []Skipped
}

// Compute derives the desired state from the whole lease set. It is pure:
// the same inputs always give the same output. A lease is skipped when it is
// this host's own, runs another backend, lies outside the Network, is not a
// SubnetLen subnet, shares this host's PublicIP, or overlaps a lease written
// earlier (the first writer keeps the subnet).
func Compute(self lease.Lease, leases []lease.Lease, cfg *lease.Config) Desired {
	shared := make([]*lease.Lease, len(leases))
	for i := range leases {
		shared[i] = &leases[i]
	}
	return ComputeShared(self, shared, cfg, Preference{}, nil)
}

// Admit says why a lease that could be a peer is not admitted to the
// mesh (lease/membership: it is no certified member), or "" when it is.
// nil admits every lease.
type Admit func(l *lease.Lease) string

// ComputeShared is Compute over pointers to the leases, as the lease
// watcher keeps them, with the path preference of a host in a live switch
// (the zero Preference outside one); it reorders the slice, never the
// leases.
func ComputeShared(self lease.Lease, leases []*lease.Lease, cfg *lease.Config, pref Preference, admit Admit) Desired {
	d := Desired{Network: cfg.Network, IPv6Network: cfg.IPv6Network, PeersNetwork: cfg.PeersNetwork, Self: self}
	sorted := leases
	// Oldest first, so the first writer of an overlapping range wins.
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Revision != sorted[j].Revision {
			return sorted[i].Revision < sorted[j].Revision
		}
		return sorted[i].Subnet.Addr().Less(sorted[j].Subnet.Addr())
	})
	// Every lease that gets as far as the overlap check is a SubnetLen
	// subnet, and two aligned subnets of one length overlap only when they
	// are equal: a set makes the check O(1), the whole computation O(n log n).
	kept := newSubnetSet(len(sorted))
	d.Peers = make([]Peer, 0, len(sorted))
	kept.add(self.Subnet)
	kept.add(self.IPv6Subnet)
	for _, l := range sorted {
		peer, reason, isSelf := classify(self, *l, cfg, pref, admit)
		if isSelf {
			continue
		}
		switch {
		case reason != "":
		case kept.has(l.Subnet):
			reason = fmt.Sprintf("subnet %s overlaps %s, leased earlier", l.Subnet, l.Subnet)
		case kept.has(peer.IPv6Subnet()):
			reason = fmt.Sprintf("IPv6 subnet %s overlaps %s, leased earlier", peer.IPv6Subnet(), peer.IPv6Subnet())
		}
		if reason != "" {
			d.Skipped = append(d.Skipped, Skipped{Key: peer.Key, Reason: reason})
			continue
		}
		kept.add(l.Subnet)
		kept.add(peer.IPv6Subnet())
		d.Peers = append(d.Peers, peer)
	}
	d.sort()
	return d
}

// subnetSet is a set of subnets, each stored as its address's bytes and
// its length: a map of netip.Prefix (32 bytes, with a pointer the
// collector scans) was 2.4 MB at 50,000 leases, at a whole apply's peak.
type subnetSet struct {
	v4 map[[5]byte]struct{}
	v6 map[[17]byte]struct{}
}

func newSubnetSet(n int) subnetSet {
	return subnetSet{v4: make(map[[5]byte]struct{}, n), v6: map[[17]byte]struct{}{}}
}

// add puts sn in the set; an invalid prefix is left out.
func (s subnetSet) add(sn netip.Prefix) {
	if v4, v6, ok := subnetSetKey(sn); ok && sn.Addr().Is4() {
		s.v4[v4] = struct{}{}
	} else if ok {
		s.v6[v6] = struct{}{}
	}
}

// has reports whether sn is in the set; never for an invalid prefix.
func (s subnetSet) has(sn netip.Prefix) bool {
	v4, v6, ok := subnetSetKey(sn)
	if !ok {
		return false
	}
	if sn.Addr().Is4() {
		_, in := s.v4[v4]
		return in
	}
	_, in := s.v6[v6]
	return in
}

func subnetSetKey(sn netip.Prefix) (v4 [5]byte, v6 [17]byte, ok bool) {
	if !sn.IsValid() {
		return v4, v6, false
	}
	if a := sn.Addr(); a.Is4() {
		b := a.As4()
		copy(v4[:], b[:])
		v4[4] = byte(sn.Bits())
	} else {
		b := a.As16()
		copy(v6[:], b[:])
		v6[16] = byte(sn.Bits())
	}
	return v4, v6, true
}

// IPv6Half is the IPv6 half of a dual-stack desired state, shaped as an
// IPv4 one so a backend written for one family programs it unchanged: the
// Network is the IPv6Network, this host's and every peer's Subnet, PublicIP
// and BackendData are their IPv6 ones, and peers without an IPv6 half are
// left out. Keys stay the leases' own.
func (d Desired) IPv6Half() Desired {
	out := Desired{Network: d.IPv6Network, Self: d.Self}
	out.Self.Subnet, out.Self.IPv6Subnet = d.Self.IPv6Subnet, netip.Prefix{}
	out.Self.Attrs.PublicIP, out.Self.Attrs.PublicIPv6 = d.Self.Attrs.PublicIPv6Addr(), nil
	out.Self.Attrs.BackendData = d.Self.Attrs.BackendV6Data()
	out.Self.Attrs = out.Self.Attrs.WithBackendV6Data(nil)
	for _, p := range d.Peers {
		if !p.IPv6Subnet().IsValid() {
			continue
		}
		half := Peer{Key: p.Key, Subnet: p.IPv6Subnet(), PublicIP: p.PublicIPv6(),
			BackendType: p.BackendType, BackendData: p.BackendV6Data(), Path: p.Path, Standby: p.Standby, Created: p.Created}
		if alternatives := p.Alternatives(); len(alternatives) > 0 {
			halves := make([]lease.PathAttrs, 0, len(alternatives))
			for _, a := range alternatives {
				halves = append(halves, lease.PathAttrs{BackendType: a.BackendType, BackendData: a.BackendV6Data})
			}
			half = half.WithAlternatives(halves)
		}
		out.Peers = append(out.Peers, half)
	}
	out.sort()
	return out
}

// sort orders peers by subnet and skipped leases by key.
func (d *Desired) sort() {
	sort.Slice(d.Peers, func(i, j int) bool { return peerLess(&d.Peers[i], &d.Peers[j]) })
	sort.Slice(d.Skipped, func(i, j int) bool { return d.Skipped[i].Key < d.Skipped[j].Key })
}

// peerLess is the order of a Desired's peers: by IPv4 subnet, then by
// IPv6 subnet.
func peerLess(a, b *Peer) bool {
	if a.Subnet != b.Subnet {
		return a.Subnet.Addr().Less(b.Subnet.Addr())
	}
	return a.IPv6Subnet().Addr().Less(b.IPv6Subnet().Addr())
}

// classify decides one lease on its own: a peer (reason empty), a lease to
// skip and why, or this host's own subnet (isSelf, skipped silently). Lease
// keys are canonical subnets, so no two keys share a subnet; the overlap
// check in Compute guards the whole-set path only.
func classify(self lease.Lease, l lease.Lease, cfg *lease.Config, pref Preference, admit Admit) (peer Peer, reason string, isSelf bool) {
	path, _ := pref.Path(l, cfg)
	peer = Peer{Key: l.Key(), Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP,
		BackendType: path.BackendType, BackendData: path.BackendData, Path: PathType(path, cfg), Created: l.CreateRevision}
	more := peerMore{seen: l.Attrs.Seen(), reach: l.Attrs.Reach()}
	if len(l.Attrs.Also()) > 0 {
		for _, p := range l.Attrs.Paths() {
			if t := PathType(p, cfg); t != peer.Path {
				p.BackendType = t
				more.alternatives = append(more.alternatives, p)
			}
		}
	}
	if cfg.EnableIPv6 {
		// On an IPv4-only network a flannel host's IPv6 half is not ours
		// to route; on a dual-stack one it is.
		more.ipv6Subnet, more.publicIPv6, more.backendV6Data = l.IPv6Subnet, l.Attrs.PublicIPv6Addr(), path.BackendV6Data
	}
	if !more.empty() {
		kept := more // only a peer with some of these allocates them
		peer.more = &kept
	}
	if sameSubnet(l, self) {
		return peer, "", true // our own lease (or an older copy of it)
	}
	reason = pref.Check(l, cfg)
	switch {
	case reason != "":
	case peer.Path == keyedPath:
		// Told apart by key: a host behind a NAT with the same private
		// address as this host's is a peer, which WireGuard reaches where
		// it is seen or through a relay, never at that address.
	case cfg.EnableIPv4 && l.Attrs.PublicIP == self.Attrs.PublicIP:
		reason = fmt.Sprintf("PublicIP %s is this host's own", l.Attrs.PublicIP)
	case !cfg.EnableIPv4 && l.Attrs.PublicIPv6Addr() == self.Attrs.PublicIPv6Addr():
		reason = fmt.Sprintf("PublicIPv6 %s is this host's own", l.Attrs.PublicIPv6Addr())
	case cfg.EnableIPv6 && peer.IPv6Subnet().IsValid() && peer.PublicIPv6().IsValid() && peer.PublicIPv6() == self.Attrs.PublicIPv6Addr():
		// On dual stack too: this host's IPv6 traffic to that subnet
		// would be sent to itself.
		reason = fmt.Sprintf("PublicIPv6 %s is this host's own", peer.PublicIPv6())
	}
	if reason == "" && admit != nil {
		reason = admit(&l)
	}
	return peer, reason, false
}

// keyedPath is the backend that tells its peers apart by their keys, not
// their addresses (wireguard): two of its hosts may share a PublicIP, as
// hosts behind NATs at two sites often have the same private address.
// The other backends send to the address, and skip a lease that names
// this host's own.
const keyedPath = "wireguard"

// sameSubnet reports whether l leases this host's own subnet: its IPv4
// one, or on an IPv6-only network (no IPv4 subnets) its IPv6 one.
func sameSubnet(l, self lease.Lease) bool {
	if self.Subnet.IsValid() {
		return l.Subnet == self.Subnet
	}
	return self.IPv6Subnet.IsValid() && l.IPv6Subnet == self.IPv6Subnet
}

// Check says why a lease cannot be a peer of any host on the network cfg
// describes, or "" when it can: a subnet outside the Network or of another
// length, another backend, a PublicIP no host can have. weftd skips such a
// lease; `weftctl leases` shows the reason.
func Check(l lease.Lease, cfg *lease.Config) string { return Preference{}.Check(l, cfg) }

// Check is Check for a host that runs the backends of pref beside the
// config's (a live switch): a lease that speaks one of them is a peer.
func (pref Preference) Check(l lease.Lease, cfg *lease.Config) string {
	backend := l.Attrs.Backend()
	_, speaks := pref.Path(l, cfg)
	if !cfg.EnableIPv4 {
		// IPv6-only: the IPv4 half is flannel's empty one; only the IPv6
		// half and the backend matter.
		if !l.IPv6Subnet.IsValid() {
			return "has no IPv6 subnet, and this network is IPv6-only"
		}
		if !speaks {
			return fmt.Sprintf("runs backend %q, this network uses %q", backend, cfg.Backend.Type) + strictly(cfg)
		}
		return check6(l, cfg)
	}
	switch {
	case !cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < cfg.Network.Bits():
		return fmt.Sprintf("subnet %s is outside Network %s", l.Subnet, cfg.Network)
	case l.Subnet.Bits() != cfg.SubnetLen:
		return fmt.Sprintf("subnet %s is not a /%d (SubnetLen)", l.Subnet, cfg.SubnetLen)
	case !speaks && l.Attrs.BackendType == "":
		// flannel's vxlan, host-gw and wireguard backends ignore such a
		// lease too: its host has no device of theirs to reach.
		return fmt.Sprintf("has no BackendType (a udp host's lease, as flannel writes it), this network uses %q", cfg.Backend.Type) + strictly(cfg)
	case !speaks:
		return fmt.Sprintf("runs backend %q, this network uses %q", l.Attrs.BackendType, cfg.Backend.Type) + strictly(cfg)
	case l.Subnet.Masked() != l.Subnet:
		return fmt.Sprintf("subnet %s is not aligned to /%d", l.Subnet, cfg.SubnetLen)
	}
	if why := unreachable(l.Attrs.PublicIP, cfg); why != "" {
		return fmt.Sprintf("PublicIP %s %s; no host can be reached there", l.Attrs.PublicIP, why)
	}
	if cfg.EnableIPv6 {
		return check6(l, cfg)
	}
	return ""
}

// check6 is Check for the IPv6 half of a lease on a dual-stack network.
// A lease with no IPv6 half is a peer for IPv4 (a host that leased before
// IPv6 was turned on); one whose IPv6 half is there but wrong is skipped
// whole, as a hostile or broken lease is.
func check6(l lease.Lease, cfg *lease.Config) string {
	sn := l.IPv6Subnet
	switch {
	case !sn.IsValid():
		return ""
	case !cfg.IPv6Network.Contains(sn.Addr()) || sn.Bits() < cfg.IPv6Network.Bits():
		return fmt.Sprintf("IPv6 subnet %s is outside IPv6Network %s", sn, cfg.IPv6Network)
	case sn.Bits() != cfg.IPv6SubnetLen:
		return fmt.Sprintf("IPv6 subnet %s is not a /%d (IPv6SubnetLen)", sn, cfg.IPv6SubnetLen)
	case l.Attrs.PublicIPv6 == nil:
		return fmt.Sprintf("has IPv6 subnet %s but no PublicIPv6 to reach it by", sn)
	}
	ip := *l.Attrs.PublicIPv6
	why := unreachable(ip, cfg)
	if why == "" && cfg.IPv6Network.Contains(ip) {
		why = fmt.Sprintf("is inside the overlay IPv6Network %s (encapsulated packets would loop into the overlay)", cfg.IPv6Network)
	}
	if why != "" {
		return fmt.Sprintf("PublicIPv6 %s %s; no host can be reached there", ip, why)
	}
	return ""
}

// unreachable says why ip cannot be a host's address on the underlay, or
// "" when it can. A network or broadcast address of some underlay prefix is
// not refused: on a /31 or /32 underlay it is an ordinary host address, and
// elsewhere the kernel itself refuses to send to a broadcast address.
func unreachable(ip netip.Addr, cfg *lease.Config) string {
	switch {
	case ip.IsUnspecified():
		return "is unspecified"
	case ip.IsLoopback():
		return "is a loopback address"
	case ip.IsMulticast():
		return "is a multicast address"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "is the limited broadcast address"
	case ip.IsLinkLocalUnicast():
		return "is link-local"
	case cfg.Network.Contains(ip):
		return fmt.Sprintf("is inside the overlay Network %s (encapsulated packets would loop into the overlay)", cfg.Network)
	}
	return ""
}

// strictly adds, under StrictEncryption, that a host of another backend is
// unreachable: nothing may reach it in clear.
func strictly(cfg *lease.Config) string {
	if !cfg.StrictEncryption {
		return ""
	}
	return "; unreachable under StrictEncryption, which lets nothing to it leave unencrypted"
}

// Path picks the backend this host reaches l's host by, outside a live
// switch: the config's Backend.Type when l's host speaks it (its
// BackendType, or one of its WeftAlso during its own switch). ok is false
// when it does not; the path is then the lease's own BackendType's.
func Path(l lease.Lease, cfg *lease.Config) (path lease.PathAttrs, ok bool) {
	return Preference{}.Path(l, cfg)
}

// Path is Path for a host in a live switch: the config's Backend.Type when
// l's host speaks it (unless pref puts its legacy backends first), else
// the first of pref.Legacy it speaks, else the config's again.
//
// It runs for every lease of every whole apply, so it allocates nothing.
func (pref Preference) Path(l lease.Lease, cfg *lease.Config) (path lease.PathAttrs, ok bool) {
	// The lease's own path keeps its BackendType as written (none for
	// udp), so a lease outside a switch is a peer exactly as before.
	own := lease.PathAttrs{BackendType: l.Attrs.BackendType, BackendData: l.Attrs.BackendData, BackendV6Data: l.Attrs.BackendV6Data()}
	find := func(want string) (lease.PathAttrs, bool) {
		if PathType(own, cfg) == want {
			return own, true
		}
		for _, p := range l.Attrs.Also() {
			if p.BackendType == want {
				return p, true
			}
		}
		return own, false
	}
	if !pref.LegacyFirst {
		if p, ok := find(cfg.Backend.Type); ok {
			return p, true
		}
	}
	for _, want := range pref.Legacy {
		if p, ok := find(want); ok {
			return p, true
		}
	}
	return find(cfg.Backend.Type)
}

// PathType is the backend a path names: its BackendType, or for none
// udp's, or on an untyped network (alloc) the network's own.
func PathType(p lease.PathAttrs, cfg *lease.Config) string {
	switch {
	case p.BackendType != "":
		return p.BackendType
	case cfg.Backend.Untyped:
		// flannel's alloc, like its udp, writes no BackendType; an alloc
		// network has no data path to tell the two apart by.
		return cfg.Backend.Type
	}
	return lease.DefaultBackend
}
