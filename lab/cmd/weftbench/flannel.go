package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lease"
)

// flanneldRow names the scale rows of flanneld itself (vxlan, the same
// simulated leases), measured beside weftd's in the same run.
const flanneldRow = "flanneld vxlan"

// routeWatch records when routes come and go in a namespace, from the
// kernel's own notifications: both daemons install a peer's route after
// its neighbour and FDB entry and remove it after them, so the route's
// event marks a change complete for either, timed alike.
type routeWatch struct {
	done chan struct{}
	mu   sync.Mutex
	// events are the times of each destination's notifications since the
	// watch began, added (true) or deleted.
	events map[netip.Prefix][]routeEvent
}

type routeEvent struct {
	at    time.Time
	added bool
}

// watchRoutes subscribes to route changes in namespace ns.
func watchRoutes(ns string) (*routeWatch, error) {
	handle, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer handle.Close()
	w := &routeWatch{done: make(chan struct{}), events: map[netip.Prefix][]routeEvent{}}
	updates := make(chan netlink.RouteUpdate, 1024)
	if err := netlink.RouteSubscribeWithOptions(updates, w.done, netlink.RouteSubscribeOptions{Namespace: &handle, ReceiveBufferSize: 1 << 20}); err != nil {
		return nil, fmt.Errorf("route notifications in %s: %w", ns, err)
	}
	go func() {
		for u := range updates {
			at := time.Now()
			dst, ok := netkernel.Prefix(u.Dst)
			if !ok {
				continue
			}
			w.mu.Lock()
			w.events[dst] = append(w.events[dst], routeEvent{at: at, added: u.Type == unix.RTM_NEWROUTE})
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// wait returns when dst's route was added (or deleted) after since.
func (w *routeWatch) wait(dst netip.Prefix, added bool, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		for _, e := range w.events[dst] {
			if e.added == added && !e.at.Before(since) {
				w.mu.Unlock()
				return e.at, nil
			}
		}
		w.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no notification of %s's route (added=%v) within %s", dst, added, timeout)
}

func (w *routeWatch) close() { close(w.done) }

// timeRouteChanges adds and removes one simulated vxlan lease changeRuns
// times, timing each from the etcd write to the kernel's notification of
// the lease's route (added last, removed last, by weftd and flanneld
// alike); medians.
func timeRouteChanges(l *lab.Lab, h *lab.Host, n int) (add, remove time.Duration, err error) {
	w, err := watchRoutes(h.Name)
	if err != nil {
		return 0, 0, err
	}
	defer w.close()
	ctx := context.Background()
	var adds, removes []time.Duration
	// Leases from n+changeRuns on: weftd's own timed changes used n up to
	// there, and a deleted lease's revision must not be mistaken.
	for i := range changeRuns {
		key, value := fakeLease(backends.VXLAN, n+changeRuns+i)
		dst, err := lease.ParseSubnetKey(key)
		if err != nil {
			return 0, 0, err
		}
		t0 := time.Now()
		if _, err := l.Store().Create(ctx, key, value, time.Hour); err != nil {
			return 0, 0, err
		}
		at, err := w.wait(dst, true, t0, time.Minute)
		if err != nil {
			return 0, 0, err
		}
		adds = append(adds, at.Sub(t0))
		t0 = time.Now()
		if err := l.Store().Delete(ctx, key); err != nil {
			return 0, 0, err
		}
		if at, err = w.wait(dst, false, t0, time.Minute); err != nil {
			return 0, 0, err
		}
		removes = append(removes, at.Sub(t0))
	}
	return medianDuration(adds), medianDuration(removes), nil
}

// measureFlannelScale is measureScale for flanneld: the same lab, config
// and simulated leases, flanneld (vxlan) started cold on h1 in place of
// weftd, timed until the kernel holds every route, neighbour and FDB
// entry (flanneld says nothing when it is done: the kernel is counted
// every second), then the same changes, held as long as weftd was.
func measureFlannelScale(weftd, flanneld string, n int, hold time.Duration) (scaleResult, error) {
	res := scaleResult{backend: flanneldRow, leases: n}
	_, backendConfig := scaleBackendConfig(backends.VXLAN)
	l, err := startScaleLab(weftd, backendConfig)
	if err != nil {
		return res, err
	}
	defer l.Close()
	h1 := l.Hosts[0]
	// weftd's device holds VNI 1 on port 8472, which flanneld's wants.
	if out, err := lab.Exec(h1.Name, "ip", "link", "del", "weft.1"); err != nil {
		return res, fmt.Errorf("removing weft.1: %v: %s", err, out)
	}
	if res.writeLeases, err = writeFakeLeases(l, backends.VXLAN, n, false); err != nil {
		return res, err
	}
	want := n + 1
	logPath := filepath.Join(h1.Dir, "flanneld.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logFile.Close()
	// ip netns exec: flanneld reads /sys for its interface, which must be
	// the namespace's.
	cmd := exec.Command("ip", "netns", "exec", h1.Name, flanneld, "--etcd-endpoints="+l.EtcdEndpoint(), "--iface=eth0",
		"--subnet-file="+filepath.Join(h1.Dir, "flannel-subnet.env"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	pid := cmd.Process.Pid // ip netns exec execs flanneld in its place
	for {
		if err := countVXLAN(h1, "flannel.1", want); err == nil {
			break
		} else if time.Since(start) > 10*time.Minute {
			return res, fmt.Errorf("flanneld: %w after %s (log %s)", err, time.Since(start).Round(time.Second), logPath)
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(logPath)
			return res, fmt.Errorf("flanneld exited: %s", lastLines(string(out), 5))
		case <-time.After(time.Second):
		}
	}
	res.converge = time.Since(start)
	ready := time.Now()
	res.cpu = cpuTime(pid)
	res.coldPeakKB = peakRSS(pid)
	if err := resetPeakRSS(pid); err != nil {
		return res, err
	}
	if res.addRoute, res.removeRoute, err = timeRouteChanges(l, h1, n); err != nil {
		return res, fmt.Errorf("flanneld: %w", err)
	}
	if rest := hold - time.Since(ready); rest > 0 {
		time.Sleep(rest)
	}
	res.runningPeakKB = peakRSS(pid)
	res.held = time.Since(ready)
	return res, nil
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
