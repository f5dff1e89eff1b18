package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/lab"
)

// Throughput is one iperf3 measurement.
type Throughput struct {
	Gbps float64
	// CPUSecondsPerGB is the whole machine's busy CPU time per GB moved
	// (it includes softirq work and any userspace data path).
	CPUSecondsPerGB float64
}

// Iperf runs an iperf3 server in serverNS on addr and a client in clientNS
// for seconds with streams parallel streams, and returns the received rate.
func Iperf(clientNS, serverNS, addr string, seconds, streams int) (Throughput, error) {
	server := exec.Command("ip", "netns", "exec", serverNS, "iperf3", "-s", "-1", "-B", addr)
	server.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := server.Start(); err != nil {
		return Throughput{}, err
	}
	defer func() { server.Process.Kill(); server.Wait() }()
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var busy time.Duration
	var err error
	for try := 0; ; try++ { // the server needs a moment to listen
		res.Error, res.End.SumReceived.Bytes, res.End.SumReceived.BitsPerSecond = "", 0, 0
		busy0 := cpuBusy()
		var out []byte
		out, err = exec.Command("ip", "netns", "exec", clientNS, "iperf3", "-c", addr, "-t", strconv.Itoa(seconds),
			"-P", strconv.Itoa(streams), "-J").Output()
		busy = cpuBusy() - busy0
		if jerr := json.Unmarshal(out, &res); err == nil && jerr != nil {
			err = jerr
		}
		if err == nil && (res.Error != "" || res.End.SumReceived.Bytes == 0) {
			err = fmt.Errorf("iperf3: %q, %v bytes received", res.Error, res.End.SumReceived.Bytes)
		}
		if err == nil {
			break
		}
		if try == 50 {
			return Throughput{}, fmt.Errorf("iperf3 to %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t := Throughput{Gbps: res.End.SumReceived.BitsPerSecond / 1e9}
	if gb := res.End.SumReceived.Bytes / 1e9; gb > 0 {
		t.CPUSecondsPerGB = busy.Seconds() / gb
	}
	return t, nil
}

// cpuBusy is the machine's total non-idle CPU time so far, from /proc/stat.
func cpuBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)[1:]
	var busy int64
	for i, f := range fields {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		busy += v
	}
	return time.Duration(busy) * time.Second / 100 // USER_HZ
}

// RTT is ping's view of a path.
type RTT struct{ Median, P99 time.Duration }

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// Ping measures round trips from ns to addr with count pings.
func Ping(ns, addr string, count int) (RTT, error) {
	out, err := lab.Exec(ns, "ping", "-c", strconv.Itoa(count), "-i", "0.02", "-W", "1", addr)
	if err != nil {
		return RTT{}, err
	}
	var samples []time.Duration
	for _, m := range pingTime.FindAllStringSubmatch(out, -1) {
		ms, _ := strconv.ParseFloat(m[1], 64)
		samples = append(samples, time.Duration(ms*float64(time.Millisecond)))
	}
	if len(samples) == 0 {
		return RTT{}, fmt.Errorf("no replies from %s", addr)
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return RTT{Median: samples[len(samples)/2], P99: samples[(len(samples)*99)/100]}, nil
}

// WireGuardPair is a hand-configured wireguard-go tunnel between two lab
// hosts, set up with the wireguard-go binary and `wg` the way an operator
// would, as the reference for weft's in-process device.
type WireGuardPair struct {
	procs []*exec.Cmd
	// Addrs are the tunnel addresses on the first and second host.
	Addrs [2]string
	names [2]string
	hosts [2]*lab.Host
}

// StartWireGuardPair runs binary (wireguard-go) on hosts a and b with
// device names unique to this lab, on port 51900+i, MTU mtu.
func StartWireGuardPair(l *lab.Lab, binary string, a, b *lab.Host, mtu int) (*WireGuardPair, error) {
	p := &WireGuardPair{Addrs: [2]string{"10.99.0.1", "10.99.0.2"}, hosts: [2]*lab.Host{a, b}}
	hosts := p.hosts
	var privs, pubs [2]string
	for i, h := range hosts {
		p.names[i] = fmt.Sprintf("wr%s%d", l.ID, i)
		key, err := exec.Command("wg", "genkey").Output()
		if err != nil {
			return nil, fmt.Errorf("wg genkey: %w", err)
		}
		privs[i] = filepath.Join(h.Dir, "ref.key")
		if err := os.WriteFile(privs[i], key, 0o600); err != nil {
			return nil, err
		}
		cmd := exec.Command("wg", "pubkey")
		cmd.Stdin = strings.NewReader(string(key))
		pub, err := cmd.Output()
		if err != nil {
			return nil, err
		}
		pubs[i] = strings.TrimSpace(string(pub))
		proc, err := lab.StartWireGuardGo(binary, h.Name, p.names[i])
		if err != nil {
			p.Close()
			return nil, err
		}
		p.procs = append(p.procs, proc)
	}
	for i, h := range hosts {
		other := 1 - i
		if err := lab.RunAll(
			[]string{"ip", "netns", "exec", h.Name, "wg", "set", p.names[i], "private-key", privs[i], "listen-port", strconv.Itoa(51900 + i),
				"peer", pubs[other], "endpoint", fmt.Sprintf("%s:%d", hosts[other].PublicIP, 51900+other), "allowed-ips", p.Addrs[other] + "/32," + hosts[other].ContainerIP().String() + "/32"},
			[]string{"ip", "-n", h.Name, "addr", "add", p.Addrs[i] + "/24", "dev", p.names[i]},
			[]string{"ip", "-n", h.Name, "link", "set", p.names[i], "mtu", strconv.Itoa(mtu), "up"},
		); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// CarryContainers routes each host's traffic to the other host's container
// through the pair (on) or back through weft (off), so both are measured
// over the same container-to-container path.
func (p *WireGuardPair) CarryContainers(on bool) error {
	verb := "del"
	if on {
		verb = "add"
	}
	for i, h := range p.hosts {
		other := p.hosts[1-i]
		if err := lab.RunAll([]string{"ip", "-n", h.Name, "route", verb, other.ContainerIP().String() + "/32", "dev", p.names[i]}); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the pair's processes (their devices go with them).
func (p *WireGuardPair) Close() {
	for _, proc := range p.procs {
		proc.Process.Kill()
		proc.Wait()
	}
	for _, n := range p.names {
		os.Remove("/var/run/wireguard/" + n + ".sock")
	}
}

// Reference is a hand-made data path between two lab hosts that can carry
// the containers' traffic in place of weft's, for a like-for-like measure.
type Reference interface {
	CarryContainers(on bool) error
	Close()
}

var _ Reference = (*WireGuardPair)(nil)

// handPath routes each host's traffic for the other container through a
// path configured by hand: the limit weft's own path is held to.
type handPath struct {
	hosts [2]*lab.Host
	// via returns the route arguments from host i to the other container.
	via     func(i int) []string
	cleanup []func()
}

// CarryContainers adds (on) or removes /32 routes to the other container.
func (p *handPath) CarryContainers(on bool) error {
	verb := "del"
	if on {
		verb = "add"
	}
	for i, h := range p.hosts {
		args := append([]string{"ip", "-n", h.Name, "route", verb, p.hosts[1-i].ContainerIP().String() + "/32"}, p.via(i)...)
		if err := lab.RunAll(args); err != nil {
			return err
		}
	}
	return nil
}

// Close removes what the path made.
func (p *handPath) Close() {
	for _, f := range p.cleanup {
		f()
	}
}

// PlainRouting is routing over the underlay with routes made by hand: the
// limit for host-gw.
func PlainRouting(l *lab.Lab, a, b *lab.Host) Reference {
	hosts := [2]*lab.Host{a, b}
	return &handPath{hosts: hosts, via: func(i int) []string {
		return []string{"via", hosts[1-i].PublicIP.String(), "dev", "eth0"}
	}}
}

// HandVXLAN is a kernel VXLAN pair made with ip and bridge as an operator
// would (VNI 99, port 4789): the limit for weft's vxlan.
func HandVXLAN(l *lab.Lab, a, b *lab.Host, mtu int) (Reference, error) {
	hosts := [2]*lab.Host{a, b}
	addrs := [2]string{"10.98.0.1", "10.98.0.2"}
	p := &handPath{hosts: hosts, via: func(i int) []string { return []string{"via", addrs[1-i], "dev", "vxr0"} }}
	for i, h := range hosts {
		name := h.Name
		if err := lab.RunAll(
			[]string{"ip", "-n", name, "link", "add", "vxr0", "type", "vxlan", "id", "99", "dstport", "4789", "dev", "eth0", "local", h.PublicIP.String()},
			[]string{"ip", "-n", name, "link", "set", "vxr0", "mtu", strconv.Itoa(mtu), "up"},
			[]string{"ip", "-n", name, "addr", "add", addrs[i] + "/24", "dev", "vxr0"},
			[]string{"ip", "netns", "exec", name, "bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxr0", "dst", hosts[1-i].PublicIP.String()},
		); err != nil {
			p.Close()
			return nil, err
		}
		p.cleanup = append(p.cleanup, func() { lab.RunAll([]string{"ip", "-n", name, "link", "del", "vxr0"}) })
	}
	return p, nil
}
