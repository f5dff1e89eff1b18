// Command weftbench measures weft's data paths in the lab, each next to its
// bare limit measured in the same run, and writes BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lease"
)

// path is one measured data path.
type path struct {
	name, limitOf string
	clientNS      string
	serverNS      string
	addr          string
	mtu           int
	// before and after wrap each measurement (route changes); may be nil.
	before, after func() error
	runs          map[int][]Throughput // by stream count
	rtt           RTT
}

func main() {
	if lab.RunRole() {
		return
	}
	self, _ := os.Executable()
	dir := filepath.Dir(self)
	weftd := flag.String("weftd", filepath.Join(dir, "weftd"), "weftd binary")
	wgGo := flag.String("wireguard-go", filepath.Join(dir, "wireguard"), "wireguard-go binary of the version weft embeds")
	flanneld := flag.String("flanneld", filepath.Join(dir, "flanneld"), "flanneld binary for the scale run's side-by-side rows (make bin/flanneld builds it; missing: no flanneld rows)")
	out := flag.String("out", "BENCHMARKS.md", "report to write; parts not measured in this run are kept from it")
	chart := flag.String("chart", "BENCHMARKS.svg", "chart of the data paths to write")
	runs := flag.Int("runs", 5, "runs per measurement (the median is reported)")
	seconds := flag.Int("seconds", 5, "seconds per iperf3 run")
	backends := flag.String("backends", "host-gw,vxlan,wireguard,wireguard-on-demand,udp", "data paths to measure, comma-separated (empty: keep the report's; wireguard-on-demand: the same with on-demand peers on); the report's data-path part and chart are replaced whole, so a subset drops the others' sections")
	control := flag.String("control", "host-gw,vxlan,wireguard,udp", "backends whose control plane to time (empty: keep the report's)")
	scale := flag.String("scale", "1000,10000,50000", "simulated cluster sizes, comma-separated (empty: keep the report's)")
	scaleBackends := flag.String("scale-backends", "vxlan,vxlan-signed,wireguard,wireguard-on-demand", "backends for the scale run (vxlan-signed: every lease signed by a host identity of its own; wireguard: every peer configured; wireguard-on-demand: peers configured when traffic needs them)")
	join := flag.Int("join", 200, "hosts joining at once against one etcd (0: keep the report's)")
	flood := flag.Duration("flood", time.Minute, "how long to flood a host of 10,000 on-demand wireguard peers with datagrams forged from its leases' endpoints (0: keep the report's)")
	flag.StringVar(&keepLogs, "keep-logs", "", "directory to copy each scale run's weftd log into before its lab is removed (empty: none)")
	profile := flag.String("profile", "", "directory for weftd's CPU and heap profiles during the scale run (empty: none)")
	flag.Parse()
	var sizes []int
	for _, f := range strings.Split(*scale, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			sizes = append(sizes, n)
		}
	}
	err := run(plan{profileDir: *profile, weftd: *weftd, wgGo: *wgGo, flanneld: *flanneld, out: *out, chart: *chart, runs: *runs, seconds: *seconds, joinHosts: *join, flood: *flood,
		backends: splitNonEmpty(*backends), controlBackends: splitNonEmpty(*control), sizes: sizes, scaleBackends: splitNonEmpty(*scaleBackends)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftbench:", err)
		os.Exit(1)
	}
}

func splitNonEmpty(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// report parts, in the order they appear in BENCHMARKS.md; a part not
// measured in this run is kept from the existing file.
var reportParts = []string{"\n## Control plane", "\n## Scale", "\n## Forged activations", "\n## Joining"}

// splitReport cuts an existing report into the data-path part ("") and the
// parts named by reportParts.
func splitReport(report string) map[string]string {
	parts := map[string]string{}
	cuts := []int{}
	for _, marker := range reportParts {
		if i := strings.Index(report, marker); i >= 0 {
			cuts = append(cuts, i)
		}
	}
	sort.Ints(cuts)
	end := len(report)
	if len(cuts) > 0 {
		end = cuts[0]
	}
	parts[""] = report[:end]
	for _, marker := range reportParts {
		i := strings.Index(report, marker)
		if i < 0 {
			continue
		}
		j := len(report)
		for _, c := range cuts {
			if c > i {
				j = c
				break
			}
		}
		parts[marker] = report[i:j]
	}
	return parts
}

// plan is what one weftbench run measures.
type plan struct {
	weftd, wgGo, out, chart   string
	flanneld                  string
	profileDir                string
	runs, seconds, joinHosts  int
	backends, controlBackends []string
	sizes                     []int
	scaleBackends             []string
	// flood is how long the forged-activation flood lasts (0: not run).
	flood time.Duration
}

func run(p plan) error {
	for _, bin := range []string{p.weftd, p.wgGo} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%v; run `make bench`, which builds it", err)
		}
	}
	old, _ := os.ReadFile(p.out)
	parts := splitReport(string(old))
	if len(p.backends) > 0 {
		var sections []string
		var all [][]*path
		for _, backend := range p.backends {
			paths, err := measureBackend(backend, p.weftd, p.wgGo, p.runs, p.seconds)
			if err != nil {
				return fmt.Errorf("%s: %w", backend, err)
			}
			sections = append(sections, renderSection(backend, paths))
			all = append(all, paths)
		}
		parts[""] = header(p.runs, p.seconds) + strings.Join(sections, "\n") + footer(filepath.Base(p.chart))
		if err := os.WriteFile(p.chart, []byte(renderChart(p.backends, all)), 0o644); err != nil {
			return err
		}
	}
	if len(p.controlBackends) > 0 {
		var results []controlResult
		for _, backend := range p.controlBackends {
			r, err := measureControl(backend, p.weftd, p.runs)
			if err != nil {
				return fmt.Errorf("control plane %s: %w", backend, err)
			}
			results = append(results, r)
		}
		parts[reportParts[0]] = renderControl(results)
	}
	if len(p.sizes) > 0 && len(p.scaleBackends) > 0 {
		var results []scaleResult
		for _, backend := range p.scaleBackends {
			for _, n := range p.sizes {
				if backend == backends.WireGuard && n > maxFullWireGuard {
					continue
				}
				r, err := measureScale(backend, p.weftd, n, p.profileDir)
				if err != nil {
					return fmt.Errorf("scale %s with %d leases: %w", backend, n, err)
				}
				fmt.Printf("scale %-9s %6d leases: READY in %s, CPU %s, peak RSS cold %d MiB, running %d MiB (held %s, %d whole applies, resync %s, drift %s), add one %s (%s), remove one %s (%s), %d/%d deltas\n",
					backend, n, r.converge.Round(time.Millisecond), r.cpu.Round(10*time.Millisecond), r.coldPeakKB/1024, r.runningPeakKB/1024,
					r.held.Round(time.Second), r.wholeApplies, r.resyncTook, r.drift, r.addOne.Round(time.Millisecond), r.addApply,
					r.removeOne.Round(time.Millisecond), r.removeApply, r.deltas, r.changes)
				results = append(results, r)
				if backend != backends.VXLAN {
					continue
				}
				if _, err := os.Stat(p.flanneld); err != nil {
					fmt.Printf("no flanneld rows: %v (make bin/flanneld builds it)\n", err)
					continue
				}
				f, err := measureFlannelScale(p.weftd, p.flanneld, n, r.held)
				if err != nil {
					return fmt.Errorf("scale flanneld with %d leases: %w", n, err)
				}
				fmt.Printf("scale flanneld %6d leases: converged in %s, CPU %s, peak RSS cold %d MiB, running %d MiB (held %s), add one %s, remove one %s\n",
					n, f.converge.Round(time.Millisecond), f.cpu.Round(10*time.Millisecond), f.coldPeakKB/1024, f.runningPeakKB/1024, f.held.Round(time.Second),
					f.addRoute, f.removeRoute)
				results = append(results, f)
			}
		}
		parts[reportParts[1]] = renderScale(results, time.Now())
		if slices.Contains(p.scaleBackends, backends.VXLAN) {
			var floors []kernelFloor
			for _, n := range p.sizes {
				f, err := measureKernelFloor(n)
				if err != nil {
					return fmt.Errorf("kernel floor at %d leases: %w", n, err)
				}
				fmt.Printf("kernel floor %6d leases: neighbours %s, FDB %s, routes %s (through nexthop objects %s)\n", n, f.neighbours, f.fdb, f.routes, f.nexthops)
				for _, r := range results {
					if r.backend == backends.VXLAN && r.leases == n {
						f.weftd = r.converge
					}
				}
				floors = append(floors, f)
			}
			parts[reportParts[1]] += renderKernelFloor(floors)
		}
		if slices.Contains(p.scaleBackends, wireguardOnDemand) {
			r, err := measureFirstPacket(p.weftd)
			if err != nil {
				return fmt.Errorf("first packet to an idle peer: %w", err)
			}
			fmt.Printf("first packet to an idle peer: median %s, p99 %s, lost %d of %d\n", quantile(r.idle, 0.5), quantile(r.idle, 0.99), r.lostFirstPings, r.rounds)
			parts[reportParts[1]] += renderFirstPacket(r)
		}
	}
	if p.flood > 0 {
		r, err := measureFlood(p.weftd, floodPeers, p.flood)
		if err != nil {
			return fmt.Errorf("forged activations: %w", err)
		}
		fmt.Printf("forged activations: %d sent, peak RSS %d MiB (READY %d MiB), at most %d peers configured, "+
			"%d initiations failed their proof, %d replays, live pair %s\n",
			r.sent, r.floodRSSKB/1024, r.readyRSSKB/1024, r.maxConfigured, r.forged, r.replayed, r.during)
		parts[reportParts[2]] = renderFlood(r)
	}
	if p.joinHosts > 0 {
		r, err := measureJoin(p.joinHosts)
		if err != nil {
			return fmt.Errorf("%d hosts joining: %w", p.joinHosts, err)
		}
		parts[reportParts[3]] = renderJoin(r)
	}
	report := parts[""]
	for _, marker := range reportParts {
		report += parts[marker]
	}
	fmt.Print(report)
	return os.WriteFile(p.out, []byte(report), 0o644)
}

// measureBackend runs a two-host lab with backend and measures the bare
// veth, the backend's hand-made limit and weft's path, interleaved.
func measureBackend(row, weftd, wgGo string, runs, seconds int) ([]*path, error) {
	backend, backendConfig := scaleBackendConfig(row)
	if row == backends.WireGuard {
		backendConfig = `{"Type":"wireguard"}` // the default, on-demand auto (off for two hosts)
	}
	l, err := startLab(lab.Options{Hosts: 2, Backend: backend, Weftd: weftd,
		Config: fmt.Sprintf(`{"Network":%q,"Backend":%s}`, lab.DefaultNetwork, backendConfig)})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	env, err := lease.ReadSubnetFile(h2.SubnetFile())
	if err != nil {
		return nil, err
	}
	var ref Reference
	var refName string
	switch backend {
	case backends.WireGuard:
		refName = "wireguard-go pair by hand (wg)"
		ref, err = StartWireGuardPair(l, wgGo, h1, h2, env.MTU)
	case backends.VXLAN:
		refName = "kernel VXLAN pair by hand (ip, bridge)"
		ref, err = HandVXLAN(l, h1, h2, env.MTU)
	case backends.HostGW:
		refName = "plain routing by hand (ip route)"
		ref = PlainRouting(l, h1, h2)
	default:
		// udp's limit is the bare veth itself (no hand-made equivalent).
		refName = bareName
	}
	if err != nil {
		return nil, err
	}
	c2 := h2.ContainerIP().String()
	paths := []*path{{name: bareName, clientNS: h1.Name, serverNS: h2.Name, addr: h2.PublicIP.String(), mtu: 1500}}
	if ref != nil {
		defer ref.Close()
		paths = append(paths, &path{name: refName, clientNS: h1.Container, serverNS: h2.Container, addr: c2, mtu: env.MTU,
			before: func() error { return ref.CarryContainers(true) }, after: func() error { return ref.CarryContainers(false) }})
	}
	paths = append(paths, &path{name: "weft " + row, limitOf: refName, clientNS: h1.Container, serverNS: h2.Container, addr: c2, mtu: env.MTU})
	for _, p := range paths {
		p.runs = map[int][]Throughput{}
		if err := p.measure(func() (err error) { p.rtt, err = Ping(p.clientNS, p.addr, 200); return err }); err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	// Interleave the paths run by run so drift on the machine hits all alike.
	for r := 0; r < runs; r++ {
		for _, streams := range []int{1, 4} {
			for _, p := range paths {
				var t Throughput
				err := p.measure(func() (err error) { t, err = Iperf(p.clientNS, p.serverNS, p.addr, seconds, streams); return err })
				if err != nil {
					return nil, fmt.Errorf("%s: %w", p.name, err)
				}
				fmt.Printf("%-9s run %d  %-42s P%d  %6.2f Gbit/s\n", row, r+1, p.name, streams, t.Gbps)
				p.runs[streams] = append(p.runs[streams], t)
			}
		}
	}
	return paths, nil
}

// startLab builds a lab whose etcd runs from this binary and starts it
// (weftd on every host, READY, a container each).
func startLab(opts lab.Options) (*lab.Lab, error) {
	opts.Self, _ = os.Executable()
	l, err := lab.New(opts)
	if err != nil {
		return nil, err
	}
	if err := l.Start(context.Background()); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// measure runs f between the path's before and after hooks.
func (p *path) measure(f func() error) error {
	if p.before != nil {
		if err := p.before(); err != nil {
			return err
		}
	}
	err := f()
	if p.after != nil {
		if aerr := p.after(); err == nil {
			err = aerr
		}
	}
	return err
}

func median(ts []Throughput) Throughput {
	s := append([]Throughput(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i].Gbps < s[j].Gbps })
	return s[len(s)/2]
}

// spread is the lowest and highest throughput of the runs.
func spread(ts []Throughput) (lo, hi float64) {
	for i, t := range ts {
		if i == 0 || t.Gbps < lo {
			lo = t.Gbps
		}
		hi = max(hi, t.Gbps)
	}
	return lo, hi
}

// bareName is the bare underlay path measured in every section.
const bareName = "bare veth (underlay, host to host)"

func header(runs, seconds int) string {
	return fmt.Sprintf(`# weft benchmarks

Generated by `+"`make bench`"+` on %s (%d cores, %s/%s) at %s. For each backend, two lab hosts
(network namespaces on one veth underlay) with a container each; iperf3 TCP, %d s per run, median of %d
runs, paths interleaved run by run. Every path except the bare veth carries the same
container-to-container traffic: the hand-made limit gets /32 routes to the other container that
exist only while it is measured. CPU is the whole machine's busy time per GB received (softirq and
every process included).
`, hostname(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02 15:04 UTC"), seconds, runs)
}

func renderSection(backend string, paths []*path) string {
	var b strings.Builder
	byName := map[string]*path{}
	for _, p := range paths {
		byName[p.name] = p
	}
	bare := paths[0]
	fmt.Fprintf(&b, "\n## %s\n\n| path | streams | Gbit/s | runs (min–max) | × its limit | × bare veth | CPU s/GB | MTU |\n|---|---|---|---|---|---|---|---|\n", backend)
	for _, p := range paths {
		for _, streams := range []int{1, 4} {
			m := median(p.runs[streams])
			limit := "–"
			if l := byName[p.limitOf]; l != nil {
				limit = fmt.Sprintf("**%.2f**", m.Gbps/median(l.runs[streams]).Gbps)
			}
			lo, hi := spread(p.runs[streams])
			fmt.Fprintf(&b, "| %s | %d | %.2f | %.2f–%.2f | %s | %.3f | %.2f | %d |\n", p.name, streams, m.Gbps, lo, hi, limit,
				m.Gbps/median(bare.runs[streams]).Gbps, m.CPUSecondsPerGB, p.mtu)
		}
	}
	b.WriteString("\n| path | RTT median | RTT p99 |\n|---|---|---|\n")
	for _, p := range paths {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", p.name, p.rtt.Median.Round(time.Microsecond), p.rtt.P99.Round(time.Microsecond))
	}
	return b.String()
}

func footer(chart string) string {
	return `
![Throughput of each backend next to its limit](` + chart + `)
` + targets
}

const targets = `
The wireguard-go pair is the binary of the exact module version weft embeds
(` + "`go install golang.zx2c4.com/wireguard@<version from go.mod>`" + `), configured with ` + "`wg`" + `.
The VXLAN pair is made with ` + "`ip link add type vxlan`" + ` and a flooding FDB entry, VNI 99 on port 4789.
Targets: docs/benchmark-targets.md.

ipip, extension and alloc have no figures here. ipip cannot be measured on these machines: their
kernel has no ipip module, and the VM tier that tests ipip on Debian's kernel runs under emulation
(TCG), whose throughput says nothing about a real host. extension's data path is whatever its
commands build, and alloc has none.
`

// measuredOn is the line that dates a report section: when its run
// measured it, on which machine.
func measuredOn(t time.Time) string {
	return fmt.Sprintf("Measured %s on %s (%d cores).", t.UTC().Format("2006-01-02 15:04 UTC"), hostname(), runtime.NumCPU())
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
