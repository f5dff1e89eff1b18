// Package ipip is flannel's ipip backend: one kernel IP-in-IP device
// (weft.ipip, flannel's flannel.ipip renamed) with no fixed remote, carrying
// each peer's subnet by a route via the peer's PublicIP, onlink, so the
// kernel wraps the packet in an outer IPv4 header to that address: 20
// bytes of overhead, against vxlan's 50, and no encryption. With
// DirectRouting, peers on the external interface's own networks get a
// plain route instead, as host-gw. The lease carries BackendType "ipip" and
// no BackendData, as flannel writes it.
//
// The plan is pure (plan.go); apply.go makes the kernel match it. The
// device takes IP-in-IP from any source; backends.FilterSources keeps only
// the leases' addresses (the tunnel source filter).
package ipip
