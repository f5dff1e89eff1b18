package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// scaleResult is one backend at one cluster size.
type scaleResult struct {
	backend  string
	leases   int
	converge time.Duration // weftd start to READY (every peer programmed)
	cpu      time.Duration // weftd's CPU time (user and system) to READY
	// coldPeakKB is weftd's peak RSS from its start to READY;
	// runningPeakKB its peak from READY on, held through resyncs and the
	// timed changes (the peak is reset at READY).
	coldPeakKB, runningPeakKB int
	held                      time.Duration // READY until the running peak was read
	// wholeApplies are the whole applies weftd logged while held (its
	// resync ticks); resyncTook is weftd's own time for the last.
	wholeApplies int
	resyncTook   time.Duration
	// drift is how long a route, neighbour and FDB entry deleted by hand
	// took to come back (vxlan rows; zero: not checked).
	drift       time.Duration
	writeLeases time.Duration // how long etcd took to take the leases
	// One more lease added and removed, changeRuns times: from the etcd
	// write until weftd's "applied" line (the kernel holds the change),
	// and weftd's own time for it (compute and apply).
	addOne, removeOne     time.Duration
	addApply, removeApply time.Duration
	// addRoute and removeRoute time the same kind of change to the
	// kernel's notification of the lease's route (vxlan rows and
	// flanneld's): the measure both daemons are compared by.
	addRoute, removeRoute time.Duration
	deltas, changes       int // changes applied as deltas, of all
	// Kernel calls weftd made (weft_kernel_calls_total): to converge, and
	// for the last add and remove.
	convergeCalls, addCalls, removeCalls string
}

// maxFullWireGuard is the largest cluster the plain wireguard rows (every
// peer on a wireguard-go device in weftd, about 50 KB each) are measured
// at: 50,000 of them would be 2.5 GB of wireguard-go's own state, which
// on-demand peers are the answer to.
const maxFullWireGuard = 10000

// changeRuns is how many single-lease adds and removes are timed; medians.
const changeRuns = 10

// scaleNetwork leaves room for 65,280 simulated /24 subnets beside the
// lab's own hosts (which lease in 10.0.x.0).
const scaleNetwork = "10.0.0.0/8"

// fakeLease is lease i of a simulated cluster: a /24 in 10.0.0.0/8 from
// 10.1.0.0 on, behind 172.16.x.y, with valid BackendData for backend.
func fakeLease(backend string, i int) (string, []byte) {
	subnet := fmt.Sprintf("10.%d.%d.0-24", 1+i/256, i%256)
	data := ""
	switch backend {
	case backends.VXLAN:
		data = fmt.Sprintf(`,"BackendData":{"VNI":1,"VtepMAC":"02:00:%02x:%02x:%02x:01"}`, i>>16&0xff, i>>8&0xff, i&0xff)
	case backends.WireGuard:
		data = fmt.Sprintf(`,"BackendData":{"PublicKey":%q,"Port":51820}`, fakeLeaseKey(i).Public())
	}
	return subnet, []byte(fmt.Sprintf(`{"PublicIP":"172.16.%d.%d","PublicIPv6":null,"BackendType":%q%s}`, i/250, 1+i%250, backend, data))
}

// fakeLeaseKey is the private key of simulated lease i: derived from i,
// so the flood can make initiations with the keys the leases publish.
func fakeLeaseKey(i int) keys.Key {
	k := keys.Key(sha256.Sum256([]byte(fmt.Sprintf("weftbench simulated lease %d", i))))
	k[0] &= 248 // clamped, as a WireGuard private key is
	k[31] = k[31]&127 | 64
	return k
}

// vxlanSigned names the scale rows of vxlan whose simulated leases are
// each signed by a host identity of their own, as weft hosts write them:
// against the plain vxlan rows (unsigned, as flannel writes them), what
// verifying every lease costs a host (each is verified once, where the
// watch decodes it; a resync verifies nothing again).
const vxlanSigned = "vxlan-signed"

// signLease signs simulated lease value under key as a weft host with
// its own identity and host ID (derived from i) writes it.
func signLease(i int, key string, value []byte) ([]byte, error) {
	var attrs lease.Attrs
	if err := json.Unmarshal(value, &attrs); err != nil {
		return nil, err
	}
	seed := sha256.Sum256([]byte(fmt.Sprintf("weftbench simulated identity %d", i)))
	id := keys.IdentityFromSeed(seed)
	copy(attrs.HostID[:], seed[:16])
	attrs.Identity, attrs.SignedAt = id.Public(), time.Now().Truncate(lease.SignEvery).Unix()
	return lease.Sign(id, key, attrs.Encode()), nil
}

// wireguardOnDemand names the scale rows of userspace WireGuard with
// on-demand peers; plain "wireguard" rows configure every peer
// (OnDemandPeers off), as before the mode existed.
const wireguardOnDemand = "wireguard-on-demand"

// scaleBackendConfig is the Backend object of a scale row.
func scaleBackendConfig(row string) (backend, config string) {
	switch row {
	case backends.WireGuard:
		return row, `{"Type":"wireguard","OnDemandPeers":"off"}`
	case wireguardOnDemand:
		return backends.WireGuard, `{"Type":"wireguard","OnDemandPeers":"on"}`
	case vxlanSigned:
		return backends.VXLAN, `{"Type":"vxlan"}`
	}
	return row, fmt.Sprintf(`{"Type":%q}`, row)
}

// knownPeers is the peer list weftd on h reports at /status (every
// desired peer, configured or idle), by lease key.
func knownPeers(h *lab.Host) map[string]bool {
	body, _ := lab.HTTPGet(h.Name, "http://127.0.0.1:8471/status")
	var doc struct {
		Peers []struct {
			Lease string `json:"lease"`
		} `json:"peers"`
	}
	json.Unmarshal([]byte(body), &doc)
	out := make(map[string]bool, len(doc.Peers))
	for _, p := range doc.Peers {
		out[p.Lease] = true
	}
	return out
}

// checkProgrammed checks that the kernel on h holds want peers: for vxlan
// a route, a neighbour and an FDB entry each (what converging means),
// for wireguard a device peer each, and in the on-demand mode a peer
// weftd holds ready to configure.
func checkProgrammed(l *lab.Lab, h *lab.Host, row string, want int) error {
	var got map[string]int
	switch row {
	case wireguardOnDemand:
		got = map[string]int{"peers in weftd's table": len(knownPeers(h))}
	case backends.WireGuard:
		out, _ := l.HostExec(h, "wg", "show", "weft-wg", "peers")
		got = map[string]int{"WireGuard peers": len(strings.Fields(out))}
	default:
		return countVXLAN(h, "weft.1", want)
	}
	for what, n := range got {
		if n != want {
			return fmt.Errorf("%d of %d %s in the kernel", n, want, what)
		}
	}
	return nil
}

// countVXLAN checks that vxlan device dev on h holds want routes (via a
// gateway, whether through a nexthop object or not), neighbours and FDB
// entries: weftd's or flanneld's.
func countVXLAN(h *lab.Host, dev string, want int) error {
	routes, _ := lab.Exec(h.Name, "ip", "-4", "route", "show", "dev", dev)
	neighs, _ := lab.Exec(h.Name, "ip", "-4", "neigh", "show", "dev", dev)
	fdb, _ := lab.Exec(h.Name, "bridge", "fdb", "show", "dev", dev)
	for what, n := range map[string]int{"routes": countLines(routes, " via "), "neighbours": countLines(neighs, " lladdr "), "FDB entries": countLines(fdb, " dst ")} {
		if n != want {
			return fmt.Errorf("%d of %d %s on %s", n, want, what, dev)
		}
	}
	return nil
}

// countLines counts the non-empty lines of out that hold sub.
func countLines(out, sub string) int {
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) != "" && strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

// deleteOnePeer deletes simulated lease 0's route, neighbour and FDB
// entry on h's vxlan device, as an administrator or another program
// might: the next resync must put them back.
func deleteOnePeer(h *lab.Host) error {
	subnet, mac, publicIP, err := fakeVTEP(0)
	if err != nil {
		return err
	}
	for _, cmd := range [][]string{
		{"ip", "route", "del", subnet.String(), "proto", "87"},
		{"ip", "neigh", "del", subnet.Addr().String(), "dev", "weft.1"},
		{"bridge", "fdb", "del", mac, "dev", "weft.1", "dst", publicIP.String(), "self"},
	} {
		if out, err := lab.Exec(h.Name, cmd...); err != nil {
			return fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	return nil
}

// fakeVTEP is what simulated vxlan lease i asks of a peer's kernel: its
// subnet (whose address is its VTEP address), its VTEP MAC and its
// PublicIP, read back from the lease as a host reads it.
func fakeVTEP(i int) (subnet netip.Prefix, mac string, publicIP netip.Addr, err error) {
	key, value := fakeLease(backends.VXLAN, i)
	if subnet, err = lease.ParseSubnetKey(key); err != nil {
		return
	}
	var attrs lease.Attrs
	if err = json.Unmarshal(value, &attrs); err != nil {
		return
	}
	var data struct{ VtepMAC string }
	err = json.Unmarshal(attrs.BackendData, &data)
	return subnet, data.VtepMAC, attrs.PublicIP, err
}

// resetPeakRSS resets process pid's peak RSS (VmHWM) to its RSS now, as
// /proc/<pid>/clear_refs does when written 5.
func resetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// hasPeer reports whether the kernel on h holds the peer with this lease
// (in the on-demand mode: whether weftd holds it ready).
func hasPeer(l *lab.Lab, h *lab.Host, row, key string, value []byte) bool {
	switch row {
	case wireguardOnDemand:
		return knownPeers(h)[key]
	case backends.WireGuard:
		pub := strings.Split(string(value), `"PublicKey":"`)[1][:44]
		out, _ := l.HostExec(h, "wg", "show", "weft-wg", "peers")
		return strings.Contains(out, pub)
	}
	subnet := strings.Replace(key, "-", "/", 1)
	out, _ := lab.Exec(h.Name, "ip", "-4", "route", "show", subnet)
	return strings.TrimSpace(out) != ""
}

// cpuTime is the user and system CPU time process pid has used
// (/proc/<pid>/stat, in clock ticks of 1/100 s).
func cpuTime(pid int) time.Duration {
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	// The command name (field 2) may hold spaces: count from its ')'.
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func peakRSS(pid int) int {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			v, _ := strconv.Atoi(f[1])
			return v
		}
	}
	return 0
}

// measureScale writes n simulated leases into a real etcd with weftd on h1
// stopped, starts weftd and times it to READY (sent after the first apply
// of every peer), checks the kernel holds them all, then holds it through
// its resync ticks: the timed single-lease adds and removes come right
// after one tick, a drift check (vxlan) before the next.
func measureScale(row, weftd string, n int, profileDir string) (scaleResult, error) {
	res := scaleResult{backend: row, leases: n}
	backend, backendConfig := scaleBackendConfig(row)
	l, err := startScaleLab(weftd, backendConfig)
	if err != nil {
		return res, err
	}
	defer l.Close()
	ctx := context.Background()
	h1 := l.Hosts[0]
	defer keepLog(h1, fmt.Sprintf("weftd-%s-%d.log", row, n))
	if res.writeLeases, err = writeFakeLeases(l, backend, n, row == vxlanSigned); err != nil {
		return res, err
	}
	want := n + 1 // the fake peers and h2
	start := time.Now()
	// weftd's default resync interval: the lab's hosts resync every 2 s,
	// a running host at the default, whose whole applies are what the
	// running peak holds. (Its log stays at debug: the "applied" lines
	// time each change.)
	args := []string{"-resync-interval", mesh.DefaultResync.String()}
	if profileDir != "" {
		args = append(args, "-debug-pprof")
	}
	if err := l.StartWeftd(h1, args...); err != nil {
		return res, err
	}
	var cpuProfile chan error
	if profileDir != "" {
		cpuProfile = make(chan error, 1)
		go func() {
			cpuProfile <- saveProfile(h1, profileDir, fmt.Sprintf("cpu-%s-%d.pb.gz", backend, n), "profile?seconds=4")
		}()
	}
	if err := l.WaitReady(ctx, h1); err != nil {
		return res, err
	}
	res.converge = time.Since(start)
	ready := time.Now()
	pid := l.WeftdPID(h1)
	res.cpu = cpuTime(pid)
	res.coldPeakKB = peakRSS(pid)
	if err := resetPeakRSS(pid); err != nil {
		return res, err
	}
	afterReady := h1.LogOffset()
	if profileDir != "" {
		if err := saveProfile(h1, profileDir, fmt.Sprintf("heap-ready-%s-%d.pb.gz", backend, n), "heap"); err != nil {
			return res, err
		}
		if err := <-cpuProfile; err != nil {
			return res, err
		}
	}
	if err := checkProgrammed(l, h1, row, want); err != nil {
		return res, fmt.Errorf("at READY: %w", err)
	}
	res.convergeCalls = renderCalls(kernelCalls(h1), nil)

	// The timed changes come right after a resync tick, so none meets one.
	if err := waitWholeApply(h1, afterReady, &res); err != nil {
		return res, err
	}
	if err := timeChanges(l, h1, row, backend, n, &res); err != nil {
		return res, err
	}
	if backend == backends.VXLAN {
		if res.addRoute, res.removeRoute, err = timeRouteChanges(l, h1, n); err != nil {
			return res, err
		}
	}
	// Then a route, neighbour and FDB entry of one peer deleted by hand
	// (vxlan), and held through the next tick, which puts them back.
	beforeDrift := h1.LogOffset()
	drifted := time.Now()
	if backend == backends.VXLAN {
		if err := deleteOnePeer(h1); err != nil {
			return res, err
		}
	}
	if err := waitWholeApply(h1, beforeDrift, &res); err != nil {
		return res, err
	}
	if backend == backends.VXLAN {
		if err := checkProgrammed(l, h1, row, want); err != nil {
			return res, fmt.Errorf("after the resync that follows a drift: %w", err)
		}
		res.drift = time.Since(drifted)
	}
	res.runningPeakKB = peakRSS(pid)
	res.held = time.Since(ready)
	if profileDir != "" {
		// After the changes, with a GC first: what stays live.
		if err := saveProfile(h1, profileDir, fmt.Sprintf("heap-settled-%s-%d.pb.gz", backend, n), "heap?gc=1"); err != nil {
			return res, err
		}
	}
	return res, nil
}

// keepLogs is where keepLog copies logs (-keep-logs; empty: nowhere).
var keepLogs string

// keepLog copies h's weftd log into keepLogs as name, before the lab that
// holds it is removed.
func keepLog(h *lab.Host, name string) {
	if keepLogs == "" {
		return
	}
	data, err := os.ReadFile(h.LogPath())
	if err == nil {
		err = os.MkdirAll(keepLogs, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(keepLogs, name), data, 0o644)
	}
	if err != nil {
		fmt.Printf("keeping %s: %v\n", name, err)
	}
}

// scaleConfig is the network config of a scale lab with the given Backend
// object: the lab's hosts lease in 10.0.x.0, the simulated ones from
// 10.1.0.0 on, so they never collide.
func scaleConfig(backendConfig string) string {
	return fmt.Sprintf(`{"Network":%q,"SubnetMin":"10.0.1.0","SubnetMax":"10.0.255.0","Backend":%s}`, scaleNetwork, backendConfig)
}

// startScaleLab starts a two-host lab on scaleConfig and stops both
// weftds again: h1 to start cold (weftd, or flanneld in its place), h2 so
// that it does not take the machine's CPU (programming every lease, and a
// whole apply every lab resync) while h1 is timed. Their leases stay in
// etcd.
func startScaleLab(weftd, backendConfig string) (*lab.Lab, error) {
	l, err := startLab(lab.Options{Hosts: 2, Weftd: weftd, Config: scaleConfig(backendConfig)})
	if err != nil {
		return nil, err
	}
	for _, h := range l.Hosts {
		l.StopWeftd(h, syscall.SIGTERM)
	}
	return l, nil
}

// waitWholeApply waits for weftd on h to log a whole apply after offset
// (its resync tick comes within mesh.DefaultResync, plus the apply's own
// time), counting it and keeping its time.
func waitWholeApply(h *lab.Host, offset int64, res *scaleResult) error {
	_, line, err := h.WaitLogLine(offset, 3*mesh.DefaultResync, "msg=applied", "whole=true")
	if err != nil {
		return fmt.Errorf("waiting for a resync: %w", err)
	}
	res.wholeApplies++
	res.resyncTook, _ = time.ParseDuration(lab.LogField(line, "took"))
	return nil
}

// timeChanges adds and removes one simulated lease changeRuns times,
// timing each from the etcd write to weftd's "applied" line, and checks
// the kernel after each.
func timeChanges(l *lab.Lab, h1 *lab.Host, row, backend string, n int, res *scaleResult) error {
	ctx := context.Background()
	var add, remove, addApply, removeApply []time.Duration
	for i := range changeRuns {
		key, value := fakeLease(backend, n+i)
		if row == vxlanSigned {
			var err error
			if value, err = signLease(n+i, key, value); err != nil {
				return err
			}
		}
		for _, step := range []struct {
			write   func() error
			latency *[]time.Duration
			apply   *[]time.Duration
			present bool
		}{
			{func() error { _, err := l.Store().Create(ctx, key, value, time.Hour); return err }, &add, &addApply, true},
			{func() error { return l.Store().Delete(ctx, key) }, &remove, &removeApply, false},
		} {
			callsBefore := kernelCalls(h1)
			off := h1.LogOffset()
			t0 := time.Now()
			if err := step.write(); err != nil {
				return err
			}
			at, line, err := h1.WaitLogLine(off, time.Minute, "msg=applied", key)
			if err != nil {
				return err
			}
			*step.latency = append(*step.latency, at.Sub(t0))
			took, _ := time.ParseDuration(lab.LogField(line, "took"))
			*step.apply = append(*step.apply, took)
			res.changes++
			if step.present {
				res.addCalls = renderCalls(kernelCalls(h1), callsBefore)
			} else {
				res.removeCalls = renderCalls(kernelCalls(h1), callsBefore)
			}
			if lab.LogField(line, "whole") == "false" {
				res.deltas++
			}
			if hasPeer(l, h1, row, key, value) != step.present {
				return fmt.Errorf("weftd logged %s applied, but the kernel disagrees (present=%v wanted)", key, step.present)
			}
		}
	}
	res.addOne, res.removeOne = medianDuration(add), medianDuration(remove)
	res.addApply, res.removeApply = medianDuration(addApply), medianDuration(removeApply)
	return nil
}

// writeFakeLeases writes n simulated leases of backend (each signed by an
// identity of its own when signed is set) into the lab's etcd, 16 writers
// at once, and says how long etcd took.
func writeFakeLeases(l *lab.Lab, backend string, n int, signed bool) (time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				key, value := fakeLease(backend, i)
				if signed {
					var err error
					if value, err = signLease(i, key, value); err != nil {
						errs <- err
						return
					}
				}
				if _, err := l.Store().Create(context.Background(), key, value, time.Hour); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

func medianDuration(d []time.Duration) time.Duration { return quantile(d, 0.5) }

func renderScale(results []scaleResult, measured time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
## Scale (simulated leases)

%s A real etcd holds N simulated leases (valid keys, addresses, VTEP MACs or WireGuard
keys); weftd on one lab host is started cold, with its default resync interval (%s), and programs
every peer into the kernel (vxlan: route, neighbour, FDB entry each; vxlan-signed: the same with
every lease signed by a host identity of its own, as weft hosts write them, against vxlan's unsigned
leases as flannel writes them; wireguard: userspace wireguard-go device in weftd, one peer each,
OnDemandPeers off; wireguard-on-demand: the same with OnDemandPeers on, where weftd holds every peer
in its table and the device only those traffic needs, none here, so "in the kernel" means in
weftd's /status). "Start → READY" runs from starting weftd to its READY, which it sends after the
first apply of every peer; then every route, neighbour and FDB entry (or peer) is counted in the
kernel. "Cold peak" is weftd's peak RSS from its start to READY. The peak is then reset and weftd
held through its resync ticks ("held", "whole applies"): right after one tick, single leases are
written to or deleted from etcd, %d times each, medians: from the etcd call until weftd logs the
change applied (the line is written when the kernel holds it; checked in the kernel after each),
and, in brackets, weftd's own time for the change. Then (vxlan) one peer's route, neighbour and FDB
entry are deleted by hand, and "drift" is how long until the next tick has put them back (counted
again in the kernel); "resync" is weftd's own time for that whole apply. "Running peak" is the peak
RSS over all of this. Deltas: changes applied peer by peer, of all. Kernel calls are weftd's own
count (weft_kernel_calls_total): netlink dumps, single gets and writes (one object set or deleted
each), WireGuard device reads (every peer) and configurations.

| backend | leases | etcd took them in | start → READY | CPU to READY | cold peak RSS | running peak RSS | held | whole applies | resync | drift | add one | remove one | deltas |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
`, measuredOn(measured), mesh.DefaultResync, changeRuns)
	for _, r := range results {
		if r.backend == flanneldRow {
			continue // in the side-by-side table below
		}
		drift := "–"
		if r.drift > 0 {
			drift = r.drift.Round(100 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %.1f MiB | %.1f MiB | %s | %d | %s | %s | %s (%s) | %s (%s) | %d/%d |\n", r.backend, r.leases,
			r.writeLeases.Round(time.Millisecond), r.converge.Round(time.Millisecond), r.cpu.Round(10*time.Millisecond),
			float64(r.coldPeakKB)/1024, float64(r.runningPeakKB)/1024, r.held.Round(time.Second), r.wholeApplies, r.resyncTook.Round(time.Millisecond), drift,
			r.addOne.Round(time.Millisecond), r.addApply.Round(10*time.Microsecond),
			r.removeOne.Round(time.Millisecond), r.removeApply.Round(10*time.Microsecond), r.deltas, r.changes)
	}
	b.WriteString("\n| backend | leases | kernel calls to converge | kernel calls, add one | kernel calls, remove one |\n|---|---|---|---|---|\n")
	for _, r := range results {
		if r.backend == flanneldRow {
			continue
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s |\n", r.backend, r.leases, r.convergeCalls, r.addCalls, r.removeCalls)
	}
	b.WriteString(renderFlannelComparison(results))
	b.WriteString(`
Where the wireguard row's memory goes: ` + "`make profile`" + ` (pprof heap and CPU of weftd programming
userspace peers) puts most of the heap in wireguard-go's per-peer state, allocated in device.NewPeer:
an inbound and an outbound queue per peer, plus two goroutines per peer (their stacks are outside
the heap profile but in the RSS); the largest single part of a cold start's CPU is wireguard-go's
x25519 per peer. That state is the price of running WireGuard in the daemon; where the kernel has
WireGuard, weft uses the kernel device and the state lives there. The vxlan rows show weft's own
cost, and the wireguard-on-demand rows what a userspace host pays when peers are configured only
while traffic needs them. Targets: docs/benchmark-targets.md.
`)
	return b.String()
}

// renderFlannelComparison sets each flanneld row beside weftd's vxlan row
// of the same size, measured in the same run.
func renderFlannelComparison(results []scaleResult) string {
	weft := map[int]scaleResult{}
	for _, r := range results {
		if r.backend == backends.VXLAN {
			weft[r.leases] = r
		}
	}
	var b strings.Builder
	for _, f := range results {
		w, ok := weft[f.leases]
		if f.backend != flanneldRow || !ok {
			continue
		}
		if b.Len() == 0 {
			b.WriteString(`
weftd beside flanneld (` + "`" + `make bin/flanneld` + "`" + ` builds it from its release's source), vxlan, the same simulated
leases (unsigned, as flannel writes them), each started cold on the same lab host and held as long.
flanneld says nothing when it has programmed every peer, so its "all in the kernel" is the first
count (every second) that finds every route, neighbour and FDB entry; weftd's is its READY, counted
the same way. "Add one" and "remove one" run from the etcd call to the kernel's notification of the
lease's route (both daemons add it after the neighbour and FDB entry and remove it after them),
medians of the same number of changes each. × is weftd's figure over flanneld's.

| leases | all in the kernel: weftd | flanneld | × | CPU: weftd | flanneld | cold peak RSS: weftd | flanneld | running peak RSS: weftd | flanneld | × | add one: weftd | flanneld | remove one: weftd | flanneld |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
`)
		}
		ratio := func(a, b float64) string {
			if b == 0 {
				return "–"
			}
			return fmt.Sprintf("%.2f", a/b)
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %s | %s | %s | %s | %s |\n", f.leases,
			w.converge.Round(time.Millisecond), f.converge.Round(time.Millisecond), ratio(w.converge.Seconds(), f.converge.Seconds()),
			w.cpu.Round(10*time.Millisecond), f.cpu.Round(10*time.Millisecond),
			float64(w.coldPeakKB)/1024, float64(f.coldPeakKB)/1024, float64(w.runningPeakKB)/1024, float64(f.runningPeakKB)/1024,
			ratio(float64(w.runningPeakKB), float64(f.runningPeakKB)),
			w.addRoute.Round(100*time.Microsecond), f.addRoute.Round(100*time.Microsecond), w.removeRoute.Round(100*time.Microsecond), f.removeRoute.Round(100*time.Microsecond))
	}
	return b.String()
}

// saveProfile fetches /debug/pprof/<what> from weftd on h (started with
// -debug-pprof) into dir/name; it waits for the endpoint to come up.
func saveProfile(h *lab.Host, dir, name, what string) error {
	var body string
	var err error
	for range 200 {
		if body, err = lab.HTTPGet(h.Name, "http://127.0.0.1:8471/debug/pprof/"+what); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("profile %s: %w", what, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Printf("profile written: %s\n", filepath.Join(dir, name))
	return os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
}

// kernelCalls reads weft_kernel_calls_total from weftd on h, by kind.
func kernelCalls(h *lab.Host) map[string]int {
	out := map[string]int{}
	metrics, _ := lab.HTTPGet(h.Name, "http://127.0.0.1:8471/metrics")
	for _, line := range strings.Split(metrics, "\n") {
		rest, ok := strings.CutPrefix(line, `weft_kernel_calls_total{kind="`)
		if !ok {
			continue
		}
		kind, value, _ := strings.Cut(rest, `"} `)
		n, _ := strconv.ParseFloat(value, 64)
		out[kind] = int(n)
	}
	return out
}

// renderCalls shows now minus before, kind by kind ("dump 3, write 2").
func renderCalls(now, before map[string]int) string {
	var parts []string
	for _, kind := range []string{"netlink_dump", "netlink_get", "netlink_write", "wg_read", "wg_write"} {
		if d := now[kind] - before[kind]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", strings.TrimPrefix(kind, "netlink_"), d))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
