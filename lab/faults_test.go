package lab

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// soak reports whether the long form was asked for (make soak).
func soak() bool { return os.Getenv("WEFT_SOAK") != "" }

// reliability logs a summary line that make soak collects into RELIABILITY.md.
func reliability(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("RELIABILITY: "+format, args...)
}

// outageLines counts what weftd told the operator about the store being
// away: its log lines above debug level (the lab runs weftd at debug) that
// say the store is unreachable or unavailable or a renewal failed.
func outageLines(log string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "level=DEBUG") {
			continue
		}
		if strings.Contains(line, "unreachable") || strings.Contains(line, "unavailable") || strings.Contains(line, "cannot renew") {
			n++
		}
	}
	return n
}

// cpuTime is the user+system CPU a process has used.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// pingFor pings to's container from from's every 200 ms for d in the
// background; the returned func waits and reports sent and lost.
func pingFor(from, to *Host, d time.Duration) func() (sent, lost int) {
	out := make(chan string, 1)
	go func() {
		count := int(d / (200 * time.Millisecond))
		o, _ := Exec(from.Container, "ping", "-i", "0.2", "-W", "1", "-c", strconv.Itoa(count), to.ContainerIP().String())
		out <- o
	}()
	return func() (int, int) {
		m := pingStats.FindStringSubmatch(<-out)
		if m == nil {
			return 0, 0
		}
		sent, _ := strconv.Atoi(m[1])
		recv, _ := strconv.Atoi(m[2])
		return sent, sent - recv
	}
}

// backendsFor is every backend in make soak, short otherwise.
func backendsFor(short ...string) []string {
	if soak() {
		return allBackends
	}
	return short
}

func TestFaultEtcdOutage(t *testing.T) {
	for _, backend := range backendsFor(backends.HostGW, backends.WireGuard) {
		t.Run(backend, func(t *testing.T) { etcdOutage(t, backend) })
	}
}

func etcdOutage(t *testing.T, backend string) {
	outage := 12 * time.Second
	if soak() {
		outage = 60 * time.Second
	}
	l := startCluster(t, Options{Hosts: 3, Backend: backend, WeftdArgs: []string{"-subnet-lease-ttl", "20s"}})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	pid := l.WeftdPID(h1)
	pings := pingFor(h1, h2, outage+2*time.Second)
	cpu0 := cpuTime(pid)
	l.StopEtcd()
	time.Sleep(outage)
	cpu := cpuTime(pid) - cpu0
	if err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	sent, lost := pings()
	if lost > 0 {
		t.Errorf("%d of %d pings lost while etcd was down", lost, sent)
	}
	share := cpu.Seconds() / outage.Seconds()
	if share > 0.05 {
		t.Errorf("weftd used %.1f%% of a core waiting for etcd", 100*share)
	}
	// Leases survive and are renewed: after twice the TTL they are still there.
	time.Sleep(3 * time.Second)
	eventually(t, "leases renewed after the outage", 45*time.Second, func() error {
		records, _, err := l.Store().List(context.Background())
		if err != nil {
			return err
		}
		if len(records) != 3 {
			return fmt.Errorf("%d leases", len(records))
		}
		for _, r := range records {
			if left, err := l.Store().Expiry(context.Background(), r); err != nil || left < 5*time.Second {
				return fmt.Errorf("lease %s has %s left (%v)", r.Key, left, err)
			}
		}
		return nil
	})
	log, _ := os.ReadFile(h1.LogPath())
	outageLines := outageLines(string(log))
	if outageLines < 1 || outageLines > 20 {
		t.Errorf("%d log lines about the outage; want it said, once per back-off step at most", outageLines)
	}
	reliability(t, "%s: etcd down %s: %d/%d pings lost, weftd CPU %.2fs (%.2f%% of a core), %d log lines about it",
		backend, outage, lost, sent, cpu.Seconds(), 100*share, outageLines)
}

func TestFaultEtcdWiped(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) { etcdWiped(t, backend) })
	}
}

func etcdWiped(t *testing.T, backend string) {
	l := startCluster(t, Options{Hosts: 3, Backend: backend})
	before := map[string]string{}
	for _, h := range l.Hosts {
		before[h.Name] = h.Subnet.String()
	}
	l.StopEtcd()
	if err := os.RemoveAll(l.Members[0].Dir); err != nil {
		t.Fatal(err)
	}
	if err := l.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := l.PutConfig(context.Background(), l.Config()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	eventually(t, "every host claims its subnet again", 60*time.Second, func() error {
		records, _, err := l.Store().List(context.Background())
		if err != nil {
			return err
		}
		got := map[string]bool{}
		for _, r := range records {
			got[r.Key] = true
		}
		for _, h := range l.Hosts {
			if !got[lease.SubnetKey(h.Subnet)] {
				return fmt.Errorf("%s's subnet %s not leased yet", h.Name, h.Subnet)
			}
		}
		return nil
	})
	for _, h := range l.Hosts {
		env, err := lease.ReadSubnetFile(h.SubnetFile())
		if err != nil || env.Subnet.String() != before[h.Name] {
			t.Errorf("%s: subnet file says %v (%v), had %s", h.Name, env.Subnet, err, before[h.Name])
		}
	}
	if table, ok := l.PingMatrix(); !ok {
		t.Errorf("containers lost reachability:\n%s", table)
	}
	reliability(t, "%s: etcd wiped and config re-put: all %d hosts re-claimed their own subnets within %s", backend, len(l.Hosts), time.Since(start).Round(time.Millisecond))
}

func TestFaultLeaseExpiry(t *testing.T) {
	for _, backend := range backendsFor(backends.HostGW) {
		t.Run(backend, func(t *testing.T) { leaseExpiry(t, backend) })
	}
}

func leaseExpiry(t *testing.T, backend string) {
	const ttl = 6 * time.Second
	l := startCluster(t, Options{Hosts: 3, Backend: backend, WeftdArgs: []string{"-subnet-lease-ttl", ttl.String()}})
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	l.StopWeftd(h3, syscall.SIGKILL) // no renewal from now on
	start := time.Now()
	for _, h := range []*Host{h1, h2} {
		eventually(t, "h3's route gone from "+h.Name, ttl+10*time.Second, func() error {
			status, err := HTTPGet(h.Name, "http://127.0.0.1:8471/status")
			if err != nil {
				return err
			}
			if strings.Contains(status, `"subnet":"`+h3.Subnet.String()+`"`) {
				return fmt.Errorf("still a peer in weftd's state")
			}
			if out, _ := routeTo(h, h3.Subnet.String()); out != "" {
				return fmt.Errorf("still routed: %s", out)
			}
			return nil
		})
	}
	gone := time.Since(start)
	// Live hosts keep their leases across several TTLs.
	time.Sleep(3 * ttl)
	records, _, err := l.Store().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, r := range records {
		live[r.Key] = true
	}
	for _, h := range []*Host{h1, h2} {
		if !live[lease.SubnetKey(h.Subnet)] {
			t.Errorf("live host %s lost its lease", h.Name)
		}
	}
	if err := l.Ping(h1, h2); err != nil {
		t.Error(err)
	}
	reliability(t, "%s: TTL %s: a dead host's lease expired and it left every peer after %s; live hosts kept theirs over %s",
		backend, ttl, gone.Round(time.Millisecond), 3*ttl)
}

// freeKeys returns n lease keys in 10.5.200.0/21.. that no lab host holds.
func freeKeys(l *Lab, n int) []string {
	taken := map[string]bool{}
	for _, h := range l.Hosts {
		taken[lease.SubnetKey(h.Subnet)] = true
	}
	var keys []string
	for i := 0; len(keys) < n; i++ {
		if key := fmt.Sprintf("10.5.%d.0-24", 180+i); !taken[key] {
			keys = append(keys, key)
		}
	}
	return keys
}

// allBackends are the backends every fault test that is quick enough runs on.
var allBackends = []string{backends.HostGW, backends.VXLAN, backends.WireGuard, backends.UDP}

// fakeBackendData is valid BackendData for fake peer i of backend.
func fakeBackendData(t *testing.T, backend string, i int) string {
	switch backend {
	case backends.VXLAN:
		return fmt.Sprintf(`,"BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:01:%02x"}`, i)
	case backends.WireGuard:
		k, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`,"BackendData":{"PublicKey":%q,"Port":51820}`, k.Public())
	}
	return ""
}

// programmed lists, one line per entry, what weft has programmed on h for
// backend: routes, and the neighbours and FDB entries (vxlan) or peers
// (wireguard). The udp backend's peers live in weftd's memory.
func programmed(l *Lab, h *Host, backend string) []string {
	out, _ := Exec(h.Name, "ip", "-4", "route", "show", "proto", "87")
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			lines = append(lines, "route "+f[0])
		}
	}
	rules, _ := Exec(h.Name, "iptables-save")
	for _, line := range strings.Split(rules, "\n") {
		if strings.HasPrefix(line, "-A ") && strings.Contains(line, "weft") {
			lines = append(lines, "rule "+line)
		}
	}
	switch backend {
	case backends.VXLAN:
		neigh, _ := Exec(h.Name, "ip", "neigh", "show", "dev", "weft.1")
		fdb, _ := Exec(h.Name, "bridge", "fdb", "show", "dev", "weft.1")
		for _, line := range strings.Split(neigh, "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				lines = append(lines, "neigh "+f[0])
			}
		}
		for _, line := range strings.Split(fdb, "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[1] == "dst" {
				lines = append(lines, "fdb "+f[0])
			}
		}
	case backends.WireGuard:
		peers, _ := l.HostExec(h, "wg", "show", "weft-wg", "peers")
		for _, p := range strings.Fields(peers) {
			lines = append(lines, "peer "+p)
		}
	}
	return lines
}

// wantProgrammed is how many entries programmed reports for peers: per
// backend, plus weft's forward rules (two rules and the jump to them).
func wantProgrammed(backend string, peers int) int {
	const forwardRules = 3
	switch backend {
	case backends.VXLAN:
		return 3*peers + forwardRules // route, neighbour and FDB entry each
	case backends.WireGuard:
		return peers + 1 + forwardRules // a peer each, one route for the Network
	case backends.UDP:
		return 1 + forwardRules // the Network route; peers are in weftd's memory
	}
	return peers + forwardRules
}

// TestFaultKilledMidApply kills weftd while it programs 40 new peers, then
// restarts it: what is programmed must be exactly the desired state, with
// nothing twice and nothing left over, and the subnet unchanged.
func TestFaultKilledMidApply(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			l := startCluster(t, Options{Hosts: 2, Backend: backend})
			h1, h2 := l.Hosts[0], l.Hosts[1]
			ctx := context.Background()
			for i, key := range freeKeys(l, 40) {
				value := fmt.Sprintf(`{"PublicIP":"192.168.50.%d","PublicIPv6":null,"BackendType":%q%s}`, 100+i, backend, fakeBackendData(t, backend, i))
				if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(30 * time.Millisecond) // weftd is mid-way through them
			l.StopWeftd(h1, syscall.SIGKILL)
			if err := l.StartWeftd(h1); err != nil {
				t.Fatal(err)
			}
			if err := l.WaitReady(ctx, h1); err != nil {
				t.Fatal(err)
			}
			eventually(t, "exactly the desired state", 15*time.Second, func() error {
				lines := programmed(l, h1, backend)
				seen := map[string]bool{}
				for _, line := range lines {
					if seen[line] {
						return fmt.Errorf("programmed twice: %s", line)
					}
					seen[line] = true
				}
				if want := wantProgrammed(backend, 41); len(lines) != want {
					return fmt.Errorf("%d entries, want %d (40 fake peers and h2):\n%s", len(lines), want, strings.Join(lines, "\n"))
				}
				return nil
			})
			env, err := lease.ReadSubnetFile(h1.SubnetFile())
			if err != nil || env.Subnet != h1.Subnet {
				t.Errorf("subnet after SIGKILL: %v (%v), want %s", env.Subnet, err, h1.Subnet)
			}
			eventually(t, "traffic to h2", 10*time.Second, func() error { return l.Ping(h1, h2) })
		})
	}
}

// procUsage is what a leak shows in: open files, threads, resident memory.
func procUsage(t *testing.T, pid int) (fds, threads int, rssKB int) {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "Threads:" {
			threads, _ = strconv.Atoi(f[1])
		}
		if len(f) >= 2 && f[0] == "VmRSS:" {
			rssKB, _ = strconv.Atoi(f[1])
		}
	}
	return len(entries), threads, rssKB
}

// TestFaultNoLeaks drives 1,000 lease changes through weftd and checks its
// open files, threads and memory stay flat.
func TestFaultNoLeaks(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.HostGW})
	h1 := l.Hosts[0]
	ctx := context.Background()
	keys := freeKeys(l, 50)
	churn := func(rounds int) {
		for i := range rounds {
			n := (i / 2) % 50 // create at even i, delete the same lease at odd i
			key := keys[n]
			if i%2 == 0 {
				value := fmt.Sprintf(`{"PublicIP":"192.168.50.%d","PublicIPv6":null,"BackendType":"host-gw"}`, 100+n)
				if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
					t.Fatal(err)
				}
			} else if err := l.Store().Delete(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
		eventually(t, "churn applied", 20*time.Second, func() error {
			if out, _ := Exec(h1.Name, "ip", "-4", "route", "show", "proto", "87"); strings.Count(out, "\n") != 1 {
				return fmt.Errorf("routes:\n%s", out)
			}
			return nil
		})
	}
	churn(100) // warm up caches and pools
	pid := l.WeftdPID(h1)
	fds0, threads0, rss0 := procUsage(t, pid)
	churn(1000)
	time.Sleep(time.Second)
	fds1, threads1, rss1 := procUsage(t, pid)
	if fds1 > fds0+5 || threads1 > threads0+5 || rss1 > rss0+30*1024 {
		t.Errorf("after 1,000 lease changes: fds %d→%d, threads %d→%d, RSS %d→%d KiB", fds0, fds1, threads0, threads1, rss0, rss1)
	}
	reliability(t, "1,000 lease changes: open files %d→%d, threads %d→%d, RSS %d→%d KiB", fds0, fds1, threads0, threads1, rss0, rss1)
}
