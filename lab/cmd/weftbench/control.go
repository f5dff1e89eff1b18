package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lease"
)

// controlResult is the control plane of one backend in a 3-host lab, one
// entry per run.
type controlResult struct {
	backend string
	// ready: weftd started (its lease still in etcd) until READY.
	ready []time.Duration
	// reachable: the host's READY until the last other host's container
	// answers a ping to its container.
	reachable []time.Duration
	// removed: the host's lease deleted from etcd until the last other
	// host logs the change applied (its data path no longer has the peer).
	removed []time.Duration
}

// measureControl times, runs times: a host's lease deleted while its weftd
// is stopped (until every peer dropped it), then that weftd started again
// (until READY; it claims its subnet anew), then until both other hosts'
// containers reach its container.
func measureControl(backend, weftd string, runs int) (controlResult, error) {
	res := controlResult{backend: backend}
	l, err := startLab(lab.Options{Hosts: 3, Backend: backend, Weftd: weftd})
	if err != nil {
		return res, err
	}
	defer l.Close()
	ctx := context.Background()
	h, others := l.Hosts[2], l.Hosts[:2]
	for range runs {
		l.StopWeftd(h, syscall.SIGTERM)
		key := lease.SubnetKey(h.Subnet)
		offsets := make([]int64, len(others))
		for i, o := range others {
			offsets[i] = o.LogOffset()
		}
		t0 := time.Now()
		if err := l.Store().Delete(ctx, key); err != nil {
			return res, err
		}
		var removed time.Duration
		for i, o := range others {
			at, _, err := o.WaitLogLine(offsets[i], 30*time.Second, "msg=applied", key)
			if err != nil {
				return res, err
			}
			removed = max(removed, at.Sub(t0))
		}
		res.removed = append(res.removed, removed)

		subnet := h.Subnet
		t1 := time.Now()
		if err := l.StartWeftd(h); err != nil {
			return res, err
		}
		if err := l.WaitReady(ctx, h); err != nil {
			return res, err
		}
		readyAt := time.Now()
		res.ready = append(res.ready, readyAt.Sub(t1))
		if h.Subnet != subnet {
			return res, fmt.Errorf("%s came back with %s, not its previous %s", h.Name, h.Subnet, subnet)
		}
		reach := make([]time.Duration, len(others))
		errs := make([]error, len(others))
		var wg sync.WaitGroup
		for i, o := range others {
			wg.Go(func() { reach[i], errs[i] = waitPing(o.Container, h.ContainerIP().String(), readyAt, 30*time.Second) })
		}
		wg.Wait()
		var last time.Duration
		for i := range others {
			if errs[i] != nil {
				return res, errs[i]
			}
			last = max(last, reach[i])
		}
		res.reachable = append(res.reachable, last)
		fmt.Printf("control %-9s lease removed from peers %s, start → READY %s, READY → reached by all %s\n", backend,
			removed.Round(time.Millisecond), res.ready[len(res.ready)-1].Round(time.Millisecond), last.Round(time.Millisecond))
	}
	return res, nil
}

// waitPing pings addr from namespace ns until it answers and returns the
// time from since until that answer (ping's own start-up, a few ms,
// included).
func waitPing(ns, addr string, since time.Time, timeout time.Duration) (time.Duration, error) {
	for time.Since(since) < timeout {
		if _, err := lab.Exec(ns, "ping", "-c", "1", "-W", "0.2", "-q", addr); err == nil {
			return time.Since(since), nil
		}
	}
	return 0, fmt.Errorf("%s did not answer from %s within %s", addr, ns, timeout)
}

func renderControl(results []controlResult) string {
	var b strings.Builder
	b.WriteString(`
## Control plane

` + measuredOn(time.Now()) + ` Three lab hosts with etcd up. Each run: weftd on host 3 stopped (SIGTERM), its lease deleted from
etcd — "lease removed" runs until both other hosts log the change applied; then weftd on host 3
started — "start → READY" until its sd_notify READY (it claims its subnet again); then "READY →
reachable" until the containers of both other hosts get a ping answer from host 3's container
(polled with ping, which adds a few ms). Median and worst of the runs.

| backend | runs | start → READY | READY → reachable from all | lease removed from every peer |
|---|---|---|---|---|
`)
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %s (max %s) | %s (max %s) | %s (max %s) |\n", r.backend, len(r.ready),
			ms(medianDuration(r.ready)), ms(slicesMax(r.ready)), ms(medianDuration(r.reachable)), ms(slicesMax(r.reachable)),
			ms(medianDuration(r.removed)), ms(slicesMax(r.removed)))
	}
	b.WriteString("\nTargets: docs/benchmark-targets.md.\n")
	return b.String()
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

func slicesMax(d []time.Duration) time.Duration {
	var m time.Duration
	for _, x := range d {
		m = max(m, x)
	}
	return m
}
