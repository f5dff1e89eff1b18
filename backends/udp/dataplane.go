package udp

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/mesh"
)

// headroom is kept in front of every packet in a buffer: the TUN's virtio
// header (10 bytes) is written there when offloads are on.
const headroom = 16

// bufSize fits the largest packet the TUN hands over with TSO (64 KiB).
const bufSize = 65535 + headroom

// routes is what the data plane needs per table: the table and a resolved
// conn.Endpoint per peer, so sending does no parsing.
type routes struct {
	table     *Table
	endpoints map[*Peer]conn.Endpoint
}

// dataplane moves packets between the TUN and the UDP socket: TUN→UDP in
// one goroutine, UDP→TUN in one per receive function (IPv4, IPv6), so both
// directions run on separate cores. Buffers are allocated once; the
// steady state allocates nothing per packet.
type dataplane struct {
	tun    tun.Device
	bind   conn.Bind
	recv   []conn.ReceiveFunc
	routes atomic.Pointer[routes]
	log    *slog.Logger

	drops    map[string]*atomic.Uint64
	noRoute  atomic.Uint64
	lastDrop atomic.Int64 // unix nanos of the last drop log line
	wg       sync.WaitGroup
}

func newDataplane(t tun.Device, bind conn.Bind, recv []conn.ReceiveFunc, log *slog.Logger) *dataplane {
	dp := &dataplane{tun: t, bind: bind, recv: recv, log: log, drops: map[string]*atomic.Uint64{
		DropUnknownPeer: {}, DropMalformed: {}, DropSpoofed: {}, DropNotForHost: {},
	}}
	dp.routes.Store(&routes{table: NewTable(mesh.Desired{}, 24, 0)})
	return dp
}

// setTable swaps in a new peer table; packets in flight use the old one.
func (dp *dataplane) setTable(t *Table) error {
	r := &routes{table: t, endpoints: make(map[*Peer]conn.Endpoint, t.Len())}
	for _, p := range t.bySubnet {
		ep, err := dp.bind.ParseEndpoint(p.Endpoint.String())
		if err != nil {
			return err
		}
		r.endpoints[p] = ep
	}
	dp.routes.Store(r)
	return nil
}

func (dp *dataplane) start() {
	dp.wg.Add(2 + len(dp.recv))
	go func() {
		// Link events (up, down, MTU) need no action here (Apply keeps the
		// device right), but wireguard-go's tun blocks its listener when
		// nobody reads them.
		defer dp.wg.Done()
		for range dp.tun.Events() {
		}
	}()
	go dp.tunToUDP()
	for _, fn := range dp.recv {
		go dp.udpToTUN(fn)
	}
}

// stop closes the bind and waits for the loops; the TUN is closed by the
// caller (it stays as a persistent device).
func (dp *dataplane) stop() {
	dp.bind.Close()
	dp.tun.Close()
	dp.wg.Wait()
}

func closed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

func (dp *dataplane) tunToUDP() {
	defer dp.wg.Done()
	batch := dp.tun.BatchSize()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
	}
	sizes := make([]int, batch)
	groups := map[*Peer][][]byte{}
	for {
		n, err := dp.tun.Read(bufs, sizes, headroom)
		if err != nil && closed(err) {
			return
		}
		r := dp.routes.Load()
		for i := 0; i < n; i++ {
			pkt := bufs[i][headroom : headroom+sizes[i]]
			peer, ok := r.table.Route(pkt)
			if !ok {
				dp.noRoute.Add(1)
				continue
			}
			groups[peer] = append(groups[peer], pkt)
		}
		for peer, pkts := range groups {
			if len(pkts) == 0 {
				continue
			}
			if ep := r.endpoints[peer]; ep != nil {
				for start := 0; start < len(pkts); start += dp.bind.BatchSize() {
					if err := dp.bind.Send(pkts[start:min(start+dp.bind.BatchSize(), len(pkts))], ep); err != nil && closed(err) {
						return
					}
				}
			}
			groups[peer] = pkts[:0]
		}
		if len(groups) > 4*batch {
			clear(groups) // peers come and go; do not keep dead keys forever
		}
	}
}

func (dp *dataplane) udpToTUN(recv conn.ReceiveFunc) {
	defer dp.wg.Done()
	batch := dp.bind.BatchSize()
	bufs := make([][]byte, batch)
	rx := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, bufSize)
		rx[i] = bufs[i][headroom:]
	}
	sizes := make([]int, batch)
	eps := make([]conn.Endpoint, batch)
	out := make([][]byte, 0, batch)
	for {
		n, err := recv(rx, sizes, eps)
		if err != nil {
			if closed(err) {
				return
			}
			continue
		}
		table := dp.routes.Load().table
		out = out[:0]
		for i := 0; i < n; i++ {
			src := eps[i].(*conn.StdNetEndpoint).AddrPort
			if reason := table.Accept(src, rx[i][:sizes[i]]); reason != "" {
				dp.drop(reason, src.String())
				continue
			}
			out = append(out, bufs[i][:headroom+sizes[i]])
		}
		if len(out) > 0 {
			if _, err := dp.tun.Write(out, headroom); err != nil && closed(err) {
				return
			}
		}
	}
}

// dropLogEvery bounds drop logging: hostile traffic must not flood the log.
const dropLogEvery = 10 * time.Second

func (dp *dataplane) drop(reason, src string) {
	total := dp.drops[reason].Add(1)
	now := time.Now().UnixNano()
	last := dp.lastDrop.Load()
	if now-last >= int64(dropLogEvery) && dp.lastDrop.CompareAndSwap(last, now) {
		dp.log.Warn("dropping datagrams that are not from a known peer's subnet", "reason", reason, "from", src, "dropped_so_far", total)
	}
}

// Drops returns the dropped datagram counts by reason.
func (dp *dataplane) Drops() map[string]uint64 {
	out := make(map[string]uint64, len(dp.drops))
	for k, v := range dp.drops {
		out[k] = v.Load()
	}
	return out
}
