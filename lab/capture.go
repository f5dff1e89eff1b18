package lab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Capture is a tcpdump running on the underlay bridge.
type Capture struct {
	cmd    *exec.Cmd
	file   string
	mu     sync.Mutex
	stderr strings.Builder
}

// CaptureUnderlay starts tcpdump on the underlay bridge (every host's
// traffic crosses it) for IPv4 packets other than IGMP housekeeping, and
// IPv6 ones other than ICMPv6 (neighbour discovery) in a dual-stack lab,
// and returns once it is listening.
func (l *Lab) CaptureUnderlay(name string) (*Capture, error) {
	filter := "ip and not igmp"
	if l.opts.IPv6 {
		filter = "(ip and not igmp) or (ip6 and not icmp6)"
	}
	return l.CaptureOn(l.Underlay, "br0", filter, name)
}

// CaptureOn starts tcpdump on iface in namespace ns for the packets filter
// selects (a pcap filter expression) and returns once it is listening.
func (l *Lab) CaptureOn(ns, iface, filter, name string) (*Capture, error) {
	file := filepath.Join(l.Dir, name+".pcap")
	cmd := exec.Command("ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", file, filter)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting tcpdump: %w", err)
	}
	c := &Capture{cmd: cmd, file: file}
	listening := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			c.mu.Lock()
			c.stderr.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(listening) })
			}
		}
	}()
	select {
	case <-listening:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("tcpdump did not start listening")
	}
	return c, nil
}

// Stop ends the capture and returns the raw pcap bytes and tcpdump's
// one-line-per-packet decoding of it.
func (c *Capture) Stop() (raw []byte, decoded string, err error) {
	time.Sleep(200 * time.Millisecond) // let the last packets be written (-U)
	c.cmd.Process.Signal(syscall.SIGINT)
	c.cmd.Wait()
	raw, err = os.ReadFile(c.file)
	if err != nil {
		return nil, "", err
	}
	out, err := exec.Command("tcpdump", "-nn", "-r", c.file).Output()
	if err == nil && len(out) == 0 {
		c.mu.Lock()
		err = fmt.Errorf("capture is empty; tcpdump said: %s", c.stderr.String())
		c.mu.Unlock()
	}
	return raw, string(out), err
}

// FirstPacketAt stops the capture and returns when its first packet
// crossed (tcpdump's own time stamp); ok is false when it caught none.
func (c *Capture) FirstPacketAt() (at time.Time, ok bool, err error) {
	time.Sleep(200 * time.Millisecond) // let the last packets be written (-U)
	c.cmd.Process.Signal(syscall.SIGINT)
	c.cmd.Wait()
	out, err := exec.Command("tcpdump", "-nn", "-tt", "-c", "1", "-r", c.file).Output()
	if err != nil {
		return time.Time{}, false, fmt.Errorf("reading %s: %w", c.file, err)
	}
	stamp, _, _ := strings.Cut(string(out), " ")
	if stamp == "" {
		return time.Time{}, false, nil
	}
	secs, frac, _ := strings.Cut(stamp, ".")
	var s, us int64
	if _, err := fmt.Sscan(secs, &s); err != nil {
		return time.Time{}, false, fmt.Errorf("tcpdump's time stamp %q: %w", stamp, err)
	}
	fmt.Sscan(frac, &us)
	return time.Unix(s, us*1000), true, nil
}
