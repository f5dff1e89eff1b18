package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

// inNetns runs f on a thread switched into namespace ns; sockets f creates
// belong to ns for their whole life.
func inNetns(ns string, f func() error) error {
	return enterNetns(func() (netns.NsHandle, error) { return netns.GetFromName(ns) }, f)
}

// inPidNetns runs f in the network namespace of process pid (a docker
// container's).
func inPidNetns(pid int, f func() error) error {
	return enterNetns(func() (netns.NsHandle, error) { return netns.GetFromPid(pid) }, f)
}

func enterNetns(open func() (netns.NsHandle, error), f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	target, err := open()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if netns.Set(orig) == nil {
		// Only a thread back in its own namespace may serve other goroutines;
		// otherwise it stays locked and dies with this goroutine.
		runtime.UnlockOSThread()
	}
	return ferr
}

// Stream is a TCP connection from one container to another carrying a
// known byte sequence, checked byte by byte on arrival.
type Stream struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	sent     int64
	received int64
	maxGap   time.Duration
	err      error
}

// StreamResult is what a stream saw.
type StreamResult struct {
	Sent, Received int64
	// MaxGap is the longest time between two reads (the outage a restart caused).
	MaxGap time.Duration
}

// seqByte is the byte at offset n; 251 is prime, so a lost, duplicated or
// shifted chunk shows as a mismatch.
func seqByte(n int64) byte { return byte(n % 251) }

// StartStream opens a TCP stream from from's container to to's and starts
// sending about 1 MB/s.
func (l *Lab) StartStream(from, to *Host, port int) (*Stream, error) {
	return l.StartStreamTo(from, to, to.ContainerIP(), port)
}

// StartStreamTo is StartStream to one of to's container's addresses (its
// IPv6 one in a dual-stack lab).
func (l *Lab) StartStreamTo(from, to *Host, dst netip.Addr, port int) (*Stream, error) {
	var ln net.Listener
	err := inNetns(to.Container, func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, uint16(port)).String())
		return err
	})
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	var client net.Conn
	err = inNetns(from.Container, func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		client, err = d.DialContext(context.Background(), "tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		return nil, err
	}
	server, err := ln.Accept()
	if err != nil {
		client.Close()
		return nil, err
	}
	s := &Stream{stop: make(chan struct{})}
	s.wg.Add(2)
	go s.write(client)
	go s.read(server)
	return s, nil
}

func (s *Stream) write(c net.Conn) {
	defer s.wg.Done()
	defer c.(*net.TCPConn).CloseWrite()
	buf := make([]byte, 8192)
	var off int64
	tick := time.NewTicker(8 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		for i := range buf {
			buf[i] = seqByte(off + int64(i))
		}
		c.SetWriteDeadline(time.Now().Add(60 * time.Second))
		n, err := c.Write(buf)
		off += int64(n)
		s.mu.Lock()
		s.sent = off
		if err != nil && s.err == nil {
			s.err = fmt.Errorf("write: %w", err)
		}
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (s *Stream) read(c net.Conn) {
	defer s.wg.Done()
	defer c.Close()
	buf := make([]byte, 65536)
	var off int64
	last := time.Now()
	for {
		c.SetReadDeadline(time.Now().Add(90 * time.Second))
		n, err := c.Read(buf)
		now := time.Now()
		s.mu.Lock()
		if gap := now.Sub(last); n > 0 && gap > s.maxGap {
			s.maxGap = gap
		}
		for i := 0; i < n; i++ {
			if buf[i] != seqByte(off+int64(i)) && s.err == nil {
				s.err = fmt.Errorf("byte %d corrupted: got %d, want %d", off+int64(i), buf[i], seqByte(off+int64(i)))
			}
		}
		off += int64(n)
		s.received = off
		if err != nil && !errors.Is(err, io.EOF) && s.err == nil {
			s.err = fmt.Errorf("read: %w", err)
		}
		s.mu.Unlock()
		if n > 0 {
			last = now
		}
		if err != nil {
			return
		}
	}
}

// Received is how many bytes arrived so far.
func (s *Stream) Received() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.received
}

// Stop ends sending, waits for every byte to arrive and reports; the error
// is set if the stream broke or a byte arrived wrong.
func (s *Stream) Stop() (StreamResult, error) {
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := StreamResult{Sent: s.sent, Received: s.received, MaxGap: s.maxGap}
	if s.err == nil && r.Sent != r.Received {
		s.err = fmt.Errorf("sent %d bytes, received %d", r.Sent, r.Received)
	}
	return r, s.err
}
