// Package relay forwards the WireGuard datagrams of pairs of hosts that
// cannot reach each other directly (both behind NATs that map each
// destination anew), as they are: the relay never holds the pair's
// sessions, so it sees who talks to whom, when and how much, and nothing
// of what they say.
//
// Each pair that chose this host as its relay gets a UDP port of its own
// (the relay publishes the ports in its lease); both ends set the other's
// endpoint to that port. A datagram says which end sent it only by its
// source address, which the NATs choose, so the forwarder learns each
// end's address from its handshake messages: MAC1 of an initiation or a
// response is made with the receiver's public key, and the pair has two,
// so a handshake message that checks against one end's key came from the
// other end. Transport datagrams and cookie replies are forwarded only
// between the two addresses learned so; anything else is dropped.
//
// A spoofer who knows a pair's keys (they are public) and port can claim
// to be one end and have the other end's ciphertext sent to it: a denial
// of service until the real end's next handshake, never a read of the
// pair's traffic. Each pair's forwarding is bounded in bytes a second.
package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/device"

	"github.com/weftnet/weft/keys"
)

// WireGuard's message types (the first byte; the next three are zero).
const (
	msgInitiation = 1
	msgResponse   = 2
	msgCookie     = 3
	msgTransport  = 4
)

// MaxPairs bounds the pairs one relay forwards for: each is a socket and
// a port.
const MaxPairs = 64

// PairRate bounds the bytes a second one pair's forwarding carries (both
// directions together); beyond it datagrams are dropped and counted.
const PairRate = 64 << 20

// End is one host of a relayed pair.
type End struct {
	// Lease names the host's lease, for log lines and status.
	Lease string
	// Key is the host's WireGuard public key, which MAC1 of the
	// handshake messages sent to it is made with.
	Key keys.Key
}

// Pair is two hosts that chose this host as their relay, in lease order.
type Pair [2]End

// Counters are what the forwarder has done, summed over its pairs.
type Counters struct {
	// Forwarded and ForwardedBytes are the datagrams sent on.
	Forwarded, ForwardedBytes uint64
	// NotWireGuard are datagrams that are no WireGuard message, or a
	// handshake message made for neither end of the port's pair.
	NotWireGuard uint64
	// UnknownEnd are datagrams from an address no handshake came from,
	// or for an end whose address is not known yet.
	UnknownEnd uint64
	// OverRate are datagrams beyond the pair's PairRate.
	OverRate uint64
}

// Forwarder runs one UDP socket per relayed pair on this host's address.
type Forwarder struct {
	addr netip.Addr
	// base is the first port a pair may get; the ports tried are base up
	// to base+PortSpan.
	base uint16
	log  *slog.Logger

	mu    sync.Mutex
	pairs map[Pair]*pairSocket

	forwarded, forwardedBytes, notWireGuard, unknownEnd, overRate atomic.Uint64
}

// PortSpan is how many ports from the base a forwarder tries for its
// pairs: twice MaxPairs, so ports other programs hold leave room.
const PortSpan = 2 * MaxPairs

// New is a forwarder that listens on addr (this host's public address:
// it sends from the address the ends send to), on ports from base.
func New(addr netip.Addr, base uint16, log *slog.Logger) *Forwarder {
	return &Forwarder{addr: addr, base: base, log: log, pairs: map[Pair]*pairSocket{}}
}

// Addr is the address the forwarder listens on.
func (f *Forwarder) Addr() netip.Addr { return f.addr }

// Set makes the forwarder serve exactly want: sockets of pairs no longer
// wanted close; a pair it serves keeps its port (the ends have it); a
// new one gets the lowest port from the base that binds. It returns the
// pairs it serves and their ports; a pair it cannot serve (no port
// binds, or MaxPairs reached) is an error for that pair only.
func (f *Forwarder) Set(want []Pair) (map[Pair]uint16, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	wanted := make(map[Pair]bool, len(want))
	for _, p := range want {
		wanted[p] = true
	}
	taken := map[uint16]bool{}
	for p, s := range f.pairs {
		if !wanted[p] {
			s.close()
			delete(f.pairs, p)
			continue
		}
		taken[s.port] = true
	}
	var errs []error
	for _, p := range want {
		if _, ok := f.pairs[p]; ok {
			continue
		}
		if len(f.pairs) >= MaxPairs {
			errs = append(errs, fmt.Errorf("pair %s/%s: this relay already forwards for %d pairs", p[0].Lease, p[1].Lease, MaxPairs))
			continue
		}
		var lastErr error = errors.New("no port left")
		for port := f.base; port < f.base+PortSpan && port >= f.base; port++ {
			if taken[port] {
				continue
			}
			s, err := f.open(p, port)
			if err != nil {
				lastErr = err
				continue
			}
			f.pairs[p], taken[port] = s, true
			lastErr = nil
			break
		}
		if lastErr != nil {
			errs = append(errs, fmt.Errorf("pair %s/%s: no port from %d binds: %w", p[0].Lease, p[1].Lease, f.base, lastErr))
		}
	}
	out := make(map[Pair]uint16, len(f.pairs))
	for p, s := range f.pairs {
		out[p] = s.port
	}
	return out, errors.Join(errs...)
}

// Close closes every pair's socket.
func (f *Forwarder) Close() {
	f.Set(nil)
}

// Ends are where each pair's ends were last seen sending to the pair's
// port (invalid for an end not seen yet).
func (f *Forwarder) Ends() map[Pair][2]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[Pair][2]netip.AddrPort, len(f.pairs))
	for p, s := range f.pairs {
		s.mu.Lock()
		out[p] = s.at
		s.mu.Unlock()
	}
	return out
}

// Counters says what the forwarder has done so far.
func (f *Forwarder) Counters() Counters {
	return Counters{Forwarded: f.forwarded.Load(), ForwardedBytes: f.forwardedBytes.Load(),
		NotWireGuard: f.notWireGuard.Load(), UnknownEnd: f.unknownEnd.Load(), OverRate: f.overRate.Load()}
}

// pairSocket is one pair's port: the socket, what MAC1 is checked with
// for each end, and where each end was last seen.
type pairSocket struct {
	f    *Forwarder
	pair Pair
	port uint16
	conn *net.UDPConn
	// mac1[i] checks messages sent to end i.
	mac1 [2]device.CookieChecker
	done chan struct{}

	mu sync.Mutex
	// at[i] is end i's address, learned from its last handshake message
	// or a transport message to the other end.
	at [2]netip.AddrPort
	// indices[i] are end i's last session indices (its sender index in
	// its handshake messages; the receiver index of messages to it).
	indices [2][keptIndices]uint32
	next    [2]int
	// budget is the pair's bytes left this second, refilled at refill.
	budget int
	refill time.Time
}

func (f *Forwarder) open(p Pair, port uint16) (*pairSocket, error) {
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(f.addr, port)))
	if err != nil {
		return nil, err
	}
	s := &pairSocket{f: f, pair: p, port: port, conn: conn, done: make(chan struct{})}
	for i, e := range p {
		s.mac1[i].Init(device.NoisePublicKey(e.Key))
	}
	go s.serve()
	f.log.Info("relaying a pair's ciphertext", "port", port, "ends", []string{p[0].Lease, p[1].Lease})
	return s, nil
}

func (s *pairSocket) close() {
	s.conn.Close()
	<-s.done
	s.f.log.Info("no longer relaying a pair", "port", s.port, "ends", []string{s.pair[0].Lease, s.pair[1].Lease})
}

// serve reads the pair's datagrams until the socket closes.
func (s *pairSocket) serve() {
	defer close(s.done)
	buf := make([]byte, 1<<16)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if to, ok := s.route(buf[:n], from.Addr().Unmap(), from.Port(), time.Now()); ok {
			if _, err := s.conn.WriteToUDPAddrPort(buf[:n], to); err == nil {
				s.f.forwarded.Add(1)
				s.f.forwardedBytes.Add(uint64(n))
			}
		}
	}
}

// keptIndices is how many of an end's session indices are remembered:
// the current session, the one before it, and handshakes under way.
const keptIndices = 4

// noteIndex remembers idx as one of end's session indices.
func (s *pairSocket) noteIndex(end int, idx uint32) {
	for _, known := range s.indices[end] {
		if known == idx {
			return
		}
	}
	s.indices[end][s.next[end]] = idx
	s.next[end] = (s.next[end] + 1) % keptIndices
}

// endOfIndex is the end whose session index idx is, or -1.
func (s *pairSocket) endOfIndex(idx uint32) int {
	for end, known := range s.indices {
		for _, k := range known {
			if k == idx && idx != 0 {
				return end
			}
		}
	}
	return -1
}

// route says where msg, received from addr:port, goes: to the other end
// of the pair, once msg is a WireGuard message from one end.
func (s *pairSocket) route(msg []byte, addr netip.Addr, port uint16, now time.Time) (netip.AddrPort, bool) {
	from := netip.AddrPortFrom(addr, port)
	if len(msg) < 4 || msg[1] != 0 || msg[2] != 0 || msg[3] != 0 {
		s.f.notWireGuard.Add(1)
		return netip.AddrPort{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sender := -1
	switch binary.LittleEndian.Uint32(msg) {
	case msgInitiation, msgResponse:
		if size := len(msg); msg[0] == msgInitiation && size != device.MessageInitiationSize ||
			msg[0] == msgResponse && size != device.MessageResponseSize {
			s.f.notWireGuard.Add(1)
			return netip.AddrPort{}, false
		}
		// MAC1 is made with the receiver's key: a message to end i came
		// from the other end, which is then at from. Its sender index
		// names the sender's side of the session being made (a
		// response's receiver index is the initiator's, already known).
		for i := range s.pair {
			if s.mac1[i].CheckMAC1(msg) {
				sender = 1 - i
				break
			}
		}
		if sender < 0 {
			s.f.notWireGuard.Add(1)
			return netip.AddrPort{}, false
		}
		s.at[sender] = from
		s.noteIndex(sender, binary.LittleEndian.Uint32(msg[4:8]))
	case msgCookie, msgTransport:
		if msg[0] == msgCookie && len(msg) != device.MessageCookieReplySize || len(msg) < device.MessageTransportSize {
			s.f.notWireGuard.Add(1)
			return netip.AddrPort{}, false
		}
		// The receiver index says which end the message is for (each
		// end's indices were learnt from its handshake messages), so
		// the other end sent it: from is where it is now, when its NAT
		// mapped it anew (WireGuard roams the same way).
		receiver := s.endOfIndex(binary.LittleEndian.Uint32(msg[4:8]))
		if receiver < 0 {
			break
		}
		sender = 1 - receiver
		s.at[sender] = from
	default:
		s.f.notWireGuard.Add(1)
		return netip.AddrPort{}, false
	}
	if sender < 0 || !s.at[1-sender].IsValid() {
		s.f.unknownEnd.Add(1)
		return netip.AddrPort{}, false
	}
	if now.After(s.refill) {
		s.budget, s.refill = PairRate, now.Add(time.Second)
	}
	if s.budget < len(msg) {
		s.f.overRate.Add(1)
		return netip.AddrPort{}, false
	}
	s.budget -= len(msg)
	return s.at[1-sender], true
}
