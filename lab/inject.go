package lab

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
)

// InnerUDP builds an IPv4 packet carrying a UDP datagram from src to dst,
// with a valid header checksum: what a container would send.
func InnerUDP(src, dst netip.AddrPort, payload []byte) []byte {
	pkt := make([]byte, 28+len(payload))
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(pkt[2:4], uint16(len(pkt)))
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[12:16], s[:])
	copy(pkt[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(pkt[10:12], ^uint16(sum))
	binary.BigEndian.PutUint16(pkt[20:22], src.Port())
	binary.BigEndian.PutUint16(pkt[22:24], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:26], uint16(8+len(payload)))
	copy(pkt[28:], payload) // UDP checksum 0: none, allowed over IPv4
	return pkt
}

// SendRawUDP sends payload as a UDP datagram from src to dst out of
// namespace ns through a raw socket, so src may use a port another process
// holds (a forged datagram "from" a peer's weftd).
func SendRawUDP(ns string, src, dst netip.AddrPort, payload []byte) error {
	return inNetns(ns, func() error {
		c, err := net.ListenPacket("ip4:17", src.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		dgram := make([]byte, 8+len(payload))
		binary.BigEndian.PutUint16(dgram[0:2], src.Port())
		binary.BigEndian.PutUint16(dgram[2:4], dst.Port())
		binary.BigEndian.PutUint16(dgram[4:6], uint16(len(dgram)))
		copy(dgram[8:], payload)
		_, err = c.WriteTo(dgram, &net.IPAddr{IP: dst.Addr().AsSlice()})
		return err
	})
}

// ReceiveUDP listens on addr inside ns for wait and returns what arrived.
func ReceiveUDP(ns string, addr netip.AddrPort, wait time.Duration, during func()) ([]string, error) {
	var conn *net.UDPConn
	err := inNetns(ns, func() (err error) {
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	during()
	var got []string
	buf := make([]byte, 2048)
	deadline := time.Now().Add(wait)
	for {
		conn.SetReadDeadline(deadline)
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			return got, nil // deadline: done listening
		}
		got = append(got, fmt.Sprintf("%s from %s", buf[:n], from))
	}
}

// AddRogue puts a namespace that is no host of the cluster on the underlay
// bridge, at address .200, and returns its name and address.
func (l *Lab) AddRogue() (string, netip.Addr, error) {
	return l.AddUnderlayNetns("rogue", 200)
}

// AddUnderlayNetns puts a namespace that runs no weftd (a rogue, a
// stand-in for a flannel host) on the underlay bridge at address .n, and
// returns its name and address.
func (l *Lab) AddUnderlayNetns(role string, n int) (string, netip.Addr, error) {
	name := "wl" + l.ID + "-" + role
	addr := l.underlayAddr(n)
	if err := l.addNetns(name); err != nil {
		return "", addr, err
	}
	return name, addr, RunAll(
		[]string{"ip", "-n", l.Underlay, "link", "add", role, "type", "veth", "peer", "name", "eth0", "netns", name},
		[]string{"ip", "-n", l.Underlay, "link", "set", role, "master", "br0", "up"},
		[]string{"ip", "-n", name, "addr", "add", addr.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", name, "link", "set", "eth0", "up"},
	)
}

// SendUDP sends one datagram from inside namespace ns to dst, as any
// program in a container would.
func SendUDP(ns string, dst netip.AddrPort, payload []byte) error {
	return inNetns(ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
}

// SendUDPEach sends one datagram from inside namespace ns to each of dsts,
// as fast as one socket can (a scan).
func SendUDPEach(ns string, dsts []netip.AddrPort, payload []byte) error {
	return inNetns(ns, func() error {
		c, err := net.ListenUDP("udp4", nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, dst := range dsts {
			if _, err := c.WriteToUDPAddrPort(payload, dst); err != nil {
				return err
			}
		}
		return nil
	})
}

// HTTPGet fetches url from inside namespace ns (weftd's loopback endpoints).
func HTTPGet(ns, url string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = inNetns(ns, func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// PingSources listens for ICMP echo requests in a network namespace (enter
// runs a function in it: inNetns or inPidNetns) while during runs, and
// returns the source address of each: what the receiver sees of a sender.
func PingSources(enter func(func() error) error, wait time.Duration, during func()) ([]netip.Addr, error) {
	var conn net.PacketConn
	if err := enter(func() (err error) {
		conn, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	}); err != nil {
		return nil, err
	}
	defer conn.Close()
	during()
	var got []netip.Addr
	buf := make([]byte, 1500)
	deadline := time.Now().Add(wait)
	for {
		conn.SetReadDeadline(deadline)
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return got, nil // deadline: done listening
		}
		if n > 0 && buf[0] == 8 { // echo request
			if ip, ok := from.(*net.IPAddr); ok {
				addr, _ := netip.AddrFromSlice(ip.IP.To4())
				got = append(got, addr)
			}
		}
	}
}

// InNetns returns what runs a function in namespace ns, for PingSources.
func InNetns(ns string) func(func() error) error {
	return func(f func() error) error { return inNetns(ns, f) }
}

// InPidNetns returns what runs a function in the network namespace of
// process pid, for PingSources.
func InPidNetns(pid int) func(func() error) error {
	return func(f func() error) error { return inPidNetns(pid, f) }
}

// VXLANFrame is a VXLAN datagram's payload: the VXLAN header with vni and
// an Ethernet frame to dstMAC carrying inner (an IPv4 packet), as a VTEP
// sends it.
func VXLANFrame(vni uint32, dstMAC net.HardwareAddr, inner []byte) []byte {
	frame := make([]byte, 8+14+len(inner))
	frame[0] = 0x08 // VNI valid
	binary.BigEndian.PutUint32(frame[4:8], vni<<8)
	copy(frame[8:14], dstMAC)
	copy(frame[14:20], net.HardwareAddr{0x02, 0x77, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(frame[20:22], 0x0800)
	copy(frame[22:], inner)
	return frame
}

// SendIPIP sends inner (an IPv4 packet) as IP-in-IP from src to dst out of
// namespace ns through a raw socket: what an ipip tunnel endpoint sends.
func SendIPIP(ns string, src, dst netip.Addr, inner []byte) error {
	return inNetns(ns, func() error {
		c, err := net.ListenPacket("ip4:4", src.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteTo(inner, &net.IPAddr{IP: dst.AsSlice()})
		return err
	})
}

// SendForgedUDP sends payload to dst from src, an address the sender
// need not hold, out of namespace ns through a raw socket (one datagram
// of FloodForgedUDP).
func SendForgedUDP(ns string, src, dst netip.AddrPort, payload []byte) error {
	_, err := FloodForgedUDP(ns, dst, []netip.AddrPort{src}, [][]byte{payload}, 1, time.Nanosecond)
	return err
}

// FloodForgedUDP sends dst the payloads in turn, each from the next of
// sources, from one raw socket of namespace ns, for d: at perSecond
// datagrams a second, or as fast as the socket can when perSecond is 0.
// The datagrams' source addresses are ones the sender does not hold
// (written with their own IP header), as anyone on the path can forge
// them. It returns how many it sent.
func FloodForgedUDP(ns string, dst netip.AddrPort, sources []netip.AddrPort, payloads [][]byte, perSecond int, d time.Duration) (int, error) {
	sent := 0
	err := inNetns(ns, func() error {
		c, err := net.ListenPacket("ip4:udp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := ipv4.NewRawConn(c)
		if err != nil {
			return err
		}
		start := time.Now()
		end := start.Add(d)
		for i := 0; ; i++ {
			if perSecond > 0 {
				next := start.Add(time.Duration(i) * time.Second / time.Duration(perSecond))
				if next.After(end) {
					return nil
				}
				time.Sleep(time.Until(next))
			} else if i%1024 == 0 && time.Now().After(end) {
				return nil
			}
			payload, src := payloads[i%len(payloads)], sources[i%len(sources)]
			dgram := make([]byte, 8+len(payload))
			binary.BigEndian.PutUint16(dgram[0:2], src.Port())
			binary.BigEndian.PutUint16(dgram[2:4], dst.Port())
			binary.BigEndian.PutUint16(dgram[4:6], uint16(len(dgram)))
			copy(dgram[8:], payload)
			h := &ipv4.Header{Version: 4, Len: ipv4.HeaderLen, TotalLen: ipv4.HeaderLen + len(dgram), TTL: 64, Protocol: 17,
				Src: src.Addr().AsSlice(), Dst: dst.Addr().AsSlice()}
			if err := raw.WriteTo(h, dgram, nil); err != nil {
				return err
			}
			sent++
		}
	})
	return sent, err
}
