package mesh

import (
	"net/netip"
	"sort"

	"github.com/weftnet/weft/lease"
)

// model is the desired state last handed to the backend, so the next
// change can be turned into a Delta without a pass over all peers. Its
// peers are the Desired's own, sorted by subnet and found by the subnets
// their keys name, with the peers deltas brought or took away since in a
// map of their own: a map of every peer by key was 2.6 MB at 50,000
// leases, and a copy of every peer (as the model once held) 15 MB. Nothing
// changes a peer in place.
type model struct {
	network, network6 netip.Prefix
	self              lease.Lease
	// base are the peers of the last whole apply, as Desired sorts them.
	base []Peer
	// changed are the peers deltas changed since, by key; nil for a
	// peer that left.
	changed map[string]*Peer
	count   int // peers in the model
	skipped map[string]string
}

func newModel(d Desired) *model {
	m := &model{network: d.Network, network6: d.IPv6Network, self: d.Self, base: d.Peers, changed: map[string]*Peer{},
		count: len(d.Peers), skipped: make(map[string]string, len(d.Skipped))}
	for _, s := range d.Skipped {
		m.skipped[s.Key] = s.Reason
	}
	return m
}

// pristine says no delta changed the model since its whole apply.
func (m *model) pristine() bool { return len(m.changed) == 0 }

// desired is the Desired of a pristine model, as its whole apply had it:
// its peers are the model's own, which nothing changes in place.
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
	if p, ok := m.changed[key]; ok {
		return p, p != nil
	}
	if i := m.find(key); i >= 0 {
		return &m.base[i], true
	}
	return nil, false
}

// put sets the peer at key.
func (m *model) put(key string, p *Peer) {
	if _, ok := m.peer(key); !ok {
		m.count++
	}
	m.changed[key] = p
}

// remove takes the peer at key out.
func (m *model) remove(key string) {
	if _, ok := m.peer(key); ok {
		m.count--
	}
	m.changed[key] = nil
}

// each calls f with every peer of the model, in no order.
func (m *model) each(f func(p *Peer)) {
	for i := range m.base {
		if _, ok := m.changed[m.base[i].Key]; !ok {
			f(&m.base[i])
		}
	}
	for _, p := range m.changed {
		if p != nil {
			f(p)
		}
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
