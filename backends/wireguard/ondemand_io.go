package wireguard

import (
	"errors"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// tunWrapper is the TUN wireguard-go reads from, seen first by the
// on-demand table: a packet to a known peer that is not configured
// configures it before wireguard-go looks its destination up.
type tunWrapper struct {
	tun.Device
	peers *onDemand
}

// Read reads a batch and lets the on-demand table see each packet.
func (t *tunWrapper) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := t.Device.Read(bufs, sizes, offset)
	if n > 0 && t.peers.on() {
		t.peers.outboundBatch(bufs, sizes, offset, n)
	}
	return n, err
}

// Write writes a batch of packets wireguard-go decrypted; the on-demand
// table sees them first while peers are held (probation.go).
func (t *tunWrapper) Write(bufs [][]byte, offset int) (int, error) {
	if t.peers.on() {
		t.peers.innerBatch(bufs, offset)
	}
	return t.Device.Write(bufs, offset)
}

// bindWrapper is the UDP bind wireguard-go receives from, seen first by
// the on-demand table: a proven handshake initiation from a known peer,
// or a data packet from its lease endpoint, configures the peer before
// wireguard-go handles it (activate.go).
type bindWrapper struct {
	conn.Bind
	peers *onDemand
	// underlayMTU is the external interface's MTU (0: unknown, nothing
	// is split).
	underlayMTU int
}

// Send sends bufs to ep. A datagram too long to cross the underlay whole
// (the device carries a larger MTU than its own, Backend.CarryMTU) is
// sent by itself: in a batch, wireguard-go's bind would coalesce it with
// others under UDP GSO, whose segments the kernel never fragments (it
// refuses the whole batch with EINVAL); alone, it leaves as IP fragments.
func (b *bindWrapper) Send(bufs [][]byte, ep conn.Endpoint) error {
	limit := b.underlayMTU - 8 - 20 // UDP and IPv4 headers
	if ep.DstIP().Is6() {
		limit -= 20
	}
	if b.underlayMTU == 0 || !slices.ContainsFunc(bufs, func(buf []byte) bool { return len(buf) > limit }) {
		return b.Bind.Send(bufs, ep)
	}
	var errs []error
	start := 0
	for i, buf := range bufs {
		if len(buf) <= limit {
			continue
		}
		if start < i {
			errs = append(errs, b.Bind.Send(bufs[start:i], ep))
		}
		errs = append(errs, b.Bind.Send(bufs[i:i+1], ep))
		start = i + 1
	}
	if start < len(bufs) {
		errs = append(errs, b.Bind.Send(bufs[start:], ep))
	}
	return errors.Join(errs...)
}

// Open opens the bind and wraps each receive function.
func (b *bindWrapper) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, fn := range fns {
		// One goroutine of wireguard-go calls each receive function, so
		// its senders' slice is reused from batch to batch.
		var from []netip.AddrPort
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			n, err := fn(packets, sizes, eps)
			if n > 0 && b.peers.on() {
				from = from[:0]
				for j := range n {
					var sender netip.AddrPort
					if eps[j] != nil {
						sender = netip.AddrPortFrom(eps[j].DstIP(), endpointPort(eps[j]))
					}
					from = append(from, sender)
				}
				b.peers.inboundBatch(packets, sizes, from, n)
			}
			return n, err
		}
	}
	return fns, actual, err
}

// endpointPort is the UDP port of a received packet's sender.
func endpointPort(ep conn.Endpoint) uint16 {
	if std, ok := ep.(*conn.StdNetEndpoint); ok {
		return std.Port()
	}
	ap, err := netip.ParseAddrPort(ep.DstToString())
	if err != nil {
		return 0
	}
	return ap.Port()
}
