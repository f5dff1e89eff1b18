package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/wireguard/wireguardtest"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lab"
)

// floodPeers is the cluster size of the flood: the size the on-demand mode
// exists for.
const floodPeers = 10000

// floodResult is a host with on-demand peers under a flood of datagrams
// forged "from" its leases' endpoints (issue 30, item 4).
type floodResult struct {
	peers    int
	duration time.Duration
	sent     int
	// Peak RSS of weftd when READY and after the flood; the most peers
	// the device held during it (sampled every second).
	readyRSSKB, floodRSSKB, maxConfigured int
	refused, expired, forged, replayed    uint64
	// The live pair (h2's container to h1's) before and during the flood.
	before, during pingStats
}

// pingStats is what ping says of a path: loss and round trips.
type pingStats struct {
	sent, received int
	avg, max       time.Duration
}

var pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
var pingRTT = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/([0-9.]+)/`)

// floodPingEvery is how often the live pair pings during the flood.
const floodPingEvery = 200 * time.Millisecond

// pingFor pings addr from ns every floodPingEvery for d.
func pingFor(ns, addr string, d time.Duration) pingStats {
	out, _ := lab.Exec(ns, "ping", "-q", "-i", strconv.FormatFloat(floodPingEvery.Seconds(), 'f', -1, 64), "-W", "1", "-w", strconv.Itoa(int(d.Seconds())), addr)
	var s pingStats
	if m := pingSummary.FindStringSubmatch(out); m != nil {
		s.sent, _ = strconv.Atoi(m[1])
		s.received, _ = strconv.Atoi(m[2])
	}
	if m := pingRTT.FindStringSubmatch(out); m != nil {
		avg, _ := strconv.ParseFloat(m[1], 64)
		mx, _ := strconv.ParseFloat(m[2], 64)
		s.avg, s.max = time.Duration(avg*float64(time.Millisecond)), time.Duration(mx*float64(time.Millisecond))
	}
	return s
}

func (s pingStats) String() string {
	if s.sent == 0 {
		return "no pings"
	}
	return fmt.Sprintf("%d/%d lost, RTT avg %s max %s", s.sent-s.received, s.sent, s.avg.Round(10*time.Microsecond), s.max.Round(10*time.Microsecond))
}

// floodRate is how many datagrams of each kind the flood sends a second.
const floodRate = 1000

// floodVariety is how many distinct datagrams of each kind the flood
// cycles through.
const floodVariety = 100

// measureFlood runs h1 with n simulated wireguard leases and on-demand
// peers, then floods it for d from a namespace on the underlay, from each
// lease's endpoint in turn, with floodRate datagrams a second of each of
// three kinds, while h2's container pings h1's: 4-byte WireGuard data
// messages, random handshake initiations, and initiations made with
// leases' own keys (each new to h1 once, replays after).
func measureFlood(weftd string, n int, d time.Duration) (floodResult, error) {
	res := floodResult{peers: n, duration: d}
	_, backendConfig := scaleBackendConfig(wireguardOnDemand)
	l, err := startLab(lab.Options{Hosts: 2, Weftd: weftd,
		Config: scaleConfig(backendConfig)})
	if err != nil {
		return res, err
	}
	defer l.Close()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	l.StopWeftd(h1, syscall.SIGTERM)
	if _, err := writeFakeLeases(l, backends.WireGuard, n, false); err != nil {
		return res, err
	}
	if err := l.StartWeftd(h1); err != nil {
		return res, err
	}
	if err := l.WaitReady(context.Background(), h1); err != nil {
		return res, err
	}
	res.readyRSSKB = peakRSS(l.WeftdPID(h1))
	var sources []netip.AddrPort
	for i := range n {
		_, value := fakeLease(backends.WireGuard, i)
		var attrs struct{ PublicIP string }
		json.Unmarshal(value, &attrs)
		sources = append(sources, netip.AddrPortFrom(netip.MustParseAddr(attrs.PublicIP), 51820))
	}
	forger, _, err := l.AddUnderlayNetns("forger", 230)
	if err != nil {
		return res, err
	}
	payloads, err := floodPayloads(h1)
	if err != nil {
		return res, err
	}
	target := h1.ContainerIP().String()
	res.before = pingFor(h2.Container, target, 10*time.Second)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() { res.during = pingFor(h2.Container, target, d) })
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if st, err := onDemandStatus(h1); err == nil {
				res.maxConfigured = max(res.maxConfigured, st.Configured)
			}
		}
	})
	res.sent, err = lab.FloodForgedUDP(forger, netip.AddrPortFrom(h1.PublicIP, 51820), sources, payloads, 3*floodRate, d)
	close(stop)
	wg.Wait()
	if err != nil {
		return res, fmt.Errorf("flooding: %w", err)
	}
	res.floodRSSKB = peakRSS(l.WeftdPID(h1))
	if st, err := onDemandStatus(h1); err == nil {
		res.refused, res.expired, res.forged, res.replayed = st.Refused, st.Expired, st.Forged, st.Replayed
	}
	return res, nil
}

// floodPayloads are the flood's datagrams, the three kinds in turn: a
// data message, a random initiation, an initiation to h1 made by a
// simulated lease's key (as one captured on the wire).
func floodPayloads(h1 *lab.Host) ([][]byte, error) {
	self, err := keys.Load(filepath.Join(h1.Dir, "wg.key"))
	if err != nil {
		return nil, err
	}
	var payloads [][]byte
	for i := range floodVariety {
		src, err := wireguardtest.NewInitiationSource(fakeLeaseKey(i), self.Public())
		if err != nil {
			return nil, err
		}
		captured, err := src.Next()
		src.Close()
		if err != nil {
			return nil, err
		}
		random := make([]byte, len(captured))
		rand.Read(random)
		random[0], random[1], random[2], random[3] = 1, 0, 0, 0
		payloads = append(payloads, []byte{4, 0, 0, 0}, random, captured)
	}
	return payloads, nil
}

// onDemand is the on-demand part of weftd's /status.
type onDemand struct {
	Configured int    `json:"configured"`
	Refused    uint64 `json:"refused_unverified"`
	Expired    uint64 `json:"expired_unverified"`
	Forged     uint64 `json:"forged_initiations"`
	Replayed   uint64 `json:"replayed_initiations"`
}

// onDemandStatus reads the on-demand part of weftd's /status on h.
func onDemandStatus(h *lab.Host) (onDemand, error) {
	body, err := lab.HTTPGet(h.Name, "http://127.0.0.1:8471/status")
	if err != nil {
		return onDemand{}, err
	}
	var s struct {
		OnDemand *onDemand `json:"on_demand"`
	}
	if err := json.Unmarshal([]byte(body), &s); err != nil || s.OnDemand == nil {
		return onDemand{}, fmt.Errorf("no on-demand status in %q (%v)", body[:min(len(body), 200)], err)
	}
	return *s.OnDemand, nil
}

func renderFlood(r floodResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## Forged activations\n\n%s ", measuredOn(time.Now()))
	fmt.Fprintf(&b, "A host with %d simulated wireguard peers on demand (userspace WireGuard, default options otherwise) is flooded for %s "+
		"from a namespace on the underlay, \"from\" every lease's endpoint in turn, with %d datagrams a second of each of three kinds: "+
		"4-byte WireGuard data messages, random handshake initiations, and initiations made with %d leases' own keys (each new once, "+
		"replayed after), while the container of a live peer pings its container every %s. A proven initiation's peer stays only if "+
		"its handshake completes within its probation; a data message's is held briefly and stays only if its own traffic comes out of "+
		"the tunnel, a bounded number at once (SECURITY.md gives the bounds). Targets: docs/benchmark-targets.md.\n\n",
		r.peers, r.duration, floodRate, floodVariety, floodPingEvery)
	b.WriteString("| forged datagrams | rate | peak RSS at READY | peak RSS after the flood | peers on the device (most seen) | " +
		"data messages refused | peers removed for want of proof | initiations failing proof | replays | live pair before | live pair during |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| %d | %.0f/s | %d MiB | %d MiB | %d | %d | %d | %d | %d | %s | %s |\n", r.sent, float64(r.sent)/r.duration.Seconds(),
		r.readyRSSKB/1024, r.floodRSSKB/1024, r.maxConfigured, r.refused, r.expired, r.forged, r.replayed, r.before, r.during)
	return b.String()
}
