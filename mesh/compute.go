package mesh

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"

	"github.com/weftnet/weft/lease"
)

// Peer is another host this host must reach: its subnet lives behind its
// PublicIP, and BackendData says how (VTEP MAC, WireGuard key).
type Peer struct {
	// Key is the lease key, for log lines that name the peer.
	Key         string
	Subnet      netip.Prefix
	PublicIP    netip.Addr
	BackendType string
	BackendData json.RawMessage
	// Created is the store revision that created the peer's lease: of two
	// peers that claim the same thing (a VTEP MAC), the older one keeps it.
	Created int64
}

// Skipped is a lease left out of the desired state, and why.
type Skipped struct {
	Key    string
	Reason string
}

// Desired is everything a backend needs to program this host: the whole
// Network, this host's own lease, and every valid peer sorted by subnet.
type Desired struct {
	Network netip.Prefix
	Self    lease.Lease
	Peers   []Peer
	// Skipped lists leases that are not peers, for one warning each.
	Skipped []Skipped
}

// Compute derives the desired state from the whole lease set. It is pure:
// the same inputs always give the same output. A lease is skipped when it is
// this host's own, runs another backend, lies outside the Network, is not a
// SubnetLen subnet, shares this host's PublicIP, or overlaps a lease written
// earlier (the first writer keeps the subnet).
func Compute(self lease.Lease, leases []lease.Lease, cfg *lease.Config) Desired {
	d := Desired{Network: cfg.Network, Self: self}
	sorted := append([]lease.Lease(nil), leases...)
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
	kept := map[netip.Prefix]bool{self.Subnet: true}
	for _, l := range sorted {
		peer, reason, isSelf := classify(self, l, cfg)
		if isSelf {
			continue
		}
		if reason == "" && kept[l.Subnet] {
			reason = fmt.Sprintf("subnet %s overlaps %s, leased earlier", l.Subnet, l.Subnet)
		}
		if reason != "" {
			d.Skipped = append(d.Skipped, Skipped{Key: peer.Key, Reason: reason})
			continue
		}
		kept[l.Subnet] = true
		d.Peers = append(d.Peers, peer)
	}
	d.sort()
	return d
}

// sort orders peers by subnet and skipped leases by key.
func (d *Desired) sort() {
	sort.Slice(d.Peers, func(i, j int) bool { return d.Peers[i].Subnet.Addr().Less(d.Peers[j].Subnet.Addr()) })
	sort.Slice(d.Skipped, func(i, j int) bool { return d.Skipped[i].Key < d.Skipped[j].Key })
}

// classify decides one lease on its own: a peer (reason empty), a lease to
// skip and why, or this host's own subnet (isSelf, skipped silently). Lease
// keys are canonical subnets, so no two keys share a subnet; the overlap
// check in Compute guards the whole-set path only.
func classify(self lease.Lease, l lease.Lease, cfg *lease.Config) (peer Peer, reason string, isSelf bool) {
	peer = Peer{Key: l.Key(), Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP,
		BackendType: l.Attrs.BackendType, BackendData: l.Attrs.BackendData, Created: l.CreateRevision}
	if l.Subnet == self.Subnet {
		return peer, "", true // our own lease (or an older copy of it)
	}
	reason = Check(l, cfg)
	if reason == "" && l.Attrs.PublicIP == self.Attrs.PublicIP {
		reason = fmt.Sprintf("PublicIP %s is this host's own", l.Attrs.PublicIP)
	}
	return peer, reason, false
}

// Check says why a lease cannot be a peer of any host on the network cfg
// describes, or "" when it can: a subnet outside the Network or of another
// length, another backend, a PublicIP no host can have. weftd skips such a
// lease; `weftctl leases` shows the reason.
func Check(l lease.Lease, cfg *lease.Config) string {
	switch {
	case !cfg.Network.Contains(l.Subnet.Addr()) || l.Subnet.Bits() < cfg.Network.Bits():
		return fmt.Sprintf("subnet %s is outside Network %s", l.Subnet, cfg.Network)
	case l.Subnet.Bits() != cfg.SubnetLen:
		return fmt.Sprintf("subnet %s is not a /%d (SubnetLen)", l.Subnet, cfg.SubnetLen)
	case l.Attrs.Backend() != cfg.Backend.Type && l.Attrs.BackendType == "":
		// flannel's vxlan, host-gw and wireguard backends ignore such a
		// lease too: its host has no device of theirs to reach.
		return fmt.Sprintf("has no BackendType (a udp host's lease, as flannel writes it), this network uses %q", cfg.Backend.Type)
	case l.Attrs.Backend() != cfg.Backend.Type:
		return fmt.Sprintf("runs backend %q, this network uses %q", l.Attrs.BackendType, cfg.Backend.Type)
	case l.Subnet.Masked() != l.Subnet:
		return fmt.Sprintf("subnet %s is not aligned to /%d", l.Subnet, cfg.SubnetLen)
	}
	if why := unreachable(l.Attrs.PublicIP, cfg); why != "" {
		return fmt.Sprintf("PublicIP %s %s; no host can be reached there", l.Attrs.PublicIP, why)
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
