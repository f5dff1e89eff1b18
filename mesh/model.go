package mesh

import (
	"net/netip"
	"slices"
	"sort"

	"github.com/weftnet/weft/lease"
)

// model is the desired state last handed to the backend, so the next
// change can be turned into a Delta without a pass over all peers. Its
// peers are those of the last whole apply, sorted by subnet and found by
// the subnets their keys name, with each delta since folded in where it
// belongs: a resync then hands the backend the model itself (no copy of
// every peer beside it, 7.6 MB at 50,000 leases), and a delta costs a
// move of the peers after its own (about 1 ms there). A map of every peer
// by key was 2.6 MB at 50,000 leases.
type model struct {
	network, network6 netip.Prefix
	self              lease.Lease
	// base are the peers, as Desired sorts them. A whole apply's Desired
	// hands its slice over; a Desired of the model (desired) shares it
	// until the next delta, so a backend must not keep one past its apply.
	base    []Peer
	skipped map[string]string
}

func newModel(d Desired) *model {
	m := &model{network: d.Network, network6: d.IPv6Network, self: d.Self, base: d.Peers, skipped: make(map[string]string, len(d.Skipped))}
	for _, s := range d.Skipped {
		m.skipped[s.Key] = s.Reason
	}
	return m
}

// count is how many peers the model holds.
func (m *model) count() int { return len(m.base) }

// desired is the Desired of the model: its peers are the model's own.
func (m *model) desired(cfg *lease.Config) Desired {
	d := Desired{Network: m.network, IPv6Network: m.network6, PeersNetwork: cfg.PeersNetwork, Self: m.self, Peers: m.base}
	for key, reason := range m.skipped {
		d.Skipped = append(d.Skipped, Skipped{Key: key, Reason: reason})
	}
	sort.Slice(d.Skipped, func(i, j int) bool { return d.Skipped[i].Key < d.Skipped[j].Key })
	return d
}

// peer is the model's peer at key.
func (m *model) peer(key string) (*Peer, bool) {
	if i := m.find(key); i >= 0 {
		return &m.base[i], true
	}
	return nil, false
}

// put sets the peer at key (whose subnets key names): in place of the one
// there, or where its subnets sort.
func (m *model) put(key string, p *Peer) {
	if i := m.find(key); i >= 0 {
		m.base[i] = *p
		return
	}
	i := sort.Search(len(m.base), func(i int) bool { return !peerLess(&m.base[i], p) })
	m.base = slices.Insert(m.base, i, *p)
}

// remove takes the peer at key out.
func (m *model) remove(key string) {
	if i := m.find(key); i >= 0 {
		m.base = slices.Delete(m.base, i, i+1)
	}
}

// each calls f with every peer of the model, in subnet order.
func (m *model) each(f func(p *Peer)) {
	for i := range m.base {
		f(&m.base[i])
	}
}

// find is the index in base of the peer at key, or -1. Keys name their
// subnets, and base is sorted by subnet address, then by IPv6 subnet
// address (see Desired.sort): the run of peers with the key's IPv4
// address is searched by its IPv6 one, then compared key by key. A key
// that does not parse is in no run.
func (m *model) find(key string) int {
	v4, v6, err := lease.ParseSubnetKeys(key)
	if err != nil {
		return -1
	}
	addr4 := v4.Addr()
	lo := sort.Search(len(m.base), func(i int) bool { return !m.base[i].Subnet.Addr().Less(addr4) })
	hi := lo + sort.Search(len(m.base)-lo, func(i int) bool { return addr4.Less(m.base[lo+i].Subnet.Addr()) })
	// An IPv6-only network's peers all share the empty IPv4 subnet: there
	// the IPv6 address orders them. (On an IPv4-only network a peer has
	// no IPv6 subnet even when its key names one, so the run is searched
	// from its start.)
	from := lo
	if addr6 := v6.Addr(); v6.IsValid() && hi-lo > 1 {
		from = lo + sort.Search(hi-lo, func(i int) bool { return !m.base[lo+i].IPv6Subnet().Addr().Less(addr6) })
		if from < hi && m.base[from].IPv6Subnet().Addr() != addr6 {
			from = lo
		}
	}
	for i := from; i < hi; i++ {
		if m.base[i].Key == key {
			return i
		}
	}
	for i := lo; i < from; i++ {
		if m.base[i].Key == key {
			return i
		}
	}
	return -1
}
