package lab

import (
	"fmt"
	"net/netip"
	"sort"
	"testing"
	"time"
)

// restartGap runs one TCP stream from from's container to to's across a
// SIGTERM restart of weftd on restarted, and returns the longest time the
// receiver got nothing (every byte must arrive intact).
func restartGap(t *testing.T, l *Lab, from, to, restarted *Host, port int) time.Duration {
	t.Helper()
	return restartGapTo(t, l, from, to, to.ContainerIP(), restarted, port)
}

// restartGapTo is restartGap with the stream to dst, one of to's
// container's addresses.
func restartGapTo(t *testing.T, l *Lab, from, to *Host, dst netip.Addr, restarted *Host, port int) time.Duration {
	t.Helper()
	s, err := l.StartStreamTo(from, to, dst, port)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	restartWeftd(t, l, restarted)
	before := s.Received()
	eventually(t, "stream flows again after the restart", 60*time.Second, func() error {
		if s.Received() < before+128<<10 {
			return fmt.Errorf("%d bytes since", s.Received()-before)
		}
		return nil
	})
	res, err := s.Stop()
	if err != nil {
		t.Fatalf("stream across a restart of %s: %v", restarted.Name, err)
	}
	return res.MaxGap
}

// distribution renders durations as n, median, p95 and max.
func distribution(gaps []time.Duration) string {
	sorted := append([]time.Duration(nil), gaps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	at := func(q float64) time.Duration { return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))] }
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("n=%d median %s, p95 %s, max %s", len(sorted), r(at(0.5)), r(at(0.95)), r(sorted[len(sorted)-1]))
}

// TestRestartGapDistribution restarts weftd on the sender's and on the
// receiver's host, many times per backend in make soak (30 each side), once
// each side in make test, with a TCP stream across each restart, and
// reports the distribution of the longest gap.
func TestRestartGapDistribution(t *testing.T) {
	rounds := 1
	if soak() {
		rounds = 30
	}
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			l := startCluster(t, Options{Hosts: 2, Backend: backend})
			h1, h2 := l.Hosts[0], l.Hosts[1]
			for _, side := range []struct {
				name      string
				restarted *Host
			}{{"sender", h1}, {"receiver", h2}} {
				var gaps []time.Duration
				for i := range rounds {
					gaps = append(gaps, restartGap(t, l, h1, h2, side.restarted, 5100+i))
				}
				reliability(t, "restart gap (%s, weftd restarted on the %s): %s", backend, side.name, distribution(gaps))
			}
		})
	}
}
