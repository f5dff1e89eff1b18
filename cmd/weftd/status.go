package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/wireguard/relay"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/cmd/internal/status"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// observer collects weftd's state for /status and /metrics. Parts are set
// as weftd starts; until then the fields report nothing.
type observer struct {
	ready atomic.Bool
	// calls counts the backend's kernel calls, for weft_kernel_calls_total.
	calls netkernel.Calls

	mu         sync.Mutex
	backend    backends.Backend
	btype      string
	paths      backends.PathRule
	reconciler *mesh.Reconciler
	watcher    *lease.Watcher
	holder     *lease.Holder
	masq       bool
	forward    bool
	strict     bool
	nftables   bool
	duration   prometheus.Histogram
	// guard says what of the network config this host does not follow.
	guard *configGuard
	// members is signed membership (nil: off).
	members *members
}

func newObserver() *observer {
	return &observer{duration: prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "weft_reconcile_duration_seconds", Help: "Time to compute and apply the desired state.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	})}
}

// kernelCalls is the counter the backend's kernel calls go to.
func (o *observer) kernelCalls() *netkernel.Calls { return &o.calls }

// setBackend records the backend once it is set up, and the rule that
// tells each peer's path.
func (o *observer) setBackend(backend backends.Backend, btype string, paths backends.PathRule) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.backend, o.btype, o.paths = backend, btype, paths
}

// setLoops records the reconcile loop, the lease watcher and the holder
// of this host's lease once they exist.
func (o *observer) setLoops(r *mesh.Reconciler, w *lease.Watcher, h *lease.Holder) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reconciler, o.watcher, o.holder = r, w, h
}

// setFirewall records which rules weftd keeps, and in which mode.
func (o *observer) setFirewall(masq, forward, strict, nftables bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.masq, o.forward, o.strict, o.nftables = masq, forward, strict, nftables
}

// observeReconcile records one reconcile's duration (the Reconciler's
// OnReconcile).
func (o *observer) observeReconcile(d time.Duration, _ error) { o.duration.Observe(d.Seconds()) }

// markReady is the Reconciler's OnApplied: the first successful apply
// makes weftd ready, logs it and tells systemd.
func (o *observer) markReady(self lease.Lease, peers int, log *slog.Logger) {
	if !o.ready.CompareAndSwap(false, true) {
		return
	}
	log.Info("ready", "subnet", self.Subnet, "peers", peers)
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		log.Warn("sd_notify READY failed", "err", err)
	}
}

// status renders the /status document from what is set so far.
func (o *observer) status() status.Document { return o.document(true) }

// document is the /status document; without peers it leaves out every
// peer's line (each formatted and sorted, about 1 KB a peer: /metrics at
// 50,000 leases made 70 MB of garbage a scrape when it had them all).
func (o *observer) document(peers bool) status.Document {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := status.Document{Ready: o.ready.Load(), Backend: o.btype, Rules: map[string]bool{"masquerade": o.masq,
		"forward": o.forward}}
	if o.holder != nil {
		own := o.holder.Current()
		s.Subnet, s.PublicIP = own.Subnet.String(), own.Attrs.PublicIP.String()
		if own.IPv6Subnet.IsValid() {
			s.IPv6Subnet, s.PublicIPv6 = own.IPv6Subnet.String(), own.Attrs.PublicIPv6Addr().String()
		}
	}
	var desired mesh.Desired
	if o.reconciler != nil {
		st := o.reconciler.Stats()
		s.Reconciles, s.Errors, s.LastError, s.WholeApplies = st.Runs, st.Errors, st.LastError, st.WholeApplies
		desired = o.reconciler.Outline()
	}
	if desired.Network.IsValid() {
		s.Network = desired.Network.String()
	}
	if desired.IPv6Network.IsValid() {
		s.IPv6Network = desired.IPv6Network.String()
	}
	s.Skipped = desired.Skipped
	if o.strict {
		dropped, _ := firewall.StrictDrops(o.nftables)
		s.Strict = &status.Strict{Dropped: dropped}
	}
	if od, ok := backends.As[backends.OnDemandReporter](o.backend); ok {
		if st := od.OnDemand(); st.Enabled {
			s.OnDemand = &status.OnDemand{Known: st.Known, Configured: st.Configured, Added: st.Added, Capped: st.Capped,
				Idled: st.Idled, Refused: st.Refused, Expired: st.Expired, Forged: st.Forged, Replayed: st.Replayed,
				NATNotEager: st.NATNotEager}
		}
	}
	s.ConfigNotFollowed = o.guard.Note()
	s.Membership = o.members.status()
	if o.holder != nil {
		s.LeaseConflicts, s.LeaseContested = o.holder.Conflicts(), o.holder.Contested()
	}
	if rr, ok := backends.As[backends.RelayReporter](o.backend); ok {
		if r := rr.Relaying(); len(r.Pairs) > 0 || r.Counters != (relay.Counters{}) {
			s.Relay = &status.Relay{Forwarded: r.Counters.Forwarded, ForwardedBytes: r.Counters.ForwardedBytes,
				NotWireGuard: r.Counters.NotWireGuard, UnknownEnd: r.Counters.UnknownEnd, OverRate: r.Counters.OverRate}
			for _, p := range r.Pairs {
				s.Relay.Pairs = append(s.Relay.Pairs, status.RelayPair{Ends: p.Pair, Port: p.Port, TryDirect: p.TryDirect})
			}
		}
	}
	if peers {
		s.Peers = o.peerStatuses(s.OnDemand != nil)
	}
	if dc, ok := backends.As[backends.DropCounter](o.backend); ok {
		s.Drops = dc.Drops()
	}
	if tc, ok := backends.As[backends.TunnelDropCounter](o.backend); ok {
		for src, n := range tc.TunnelDrops() {
			if s.TunnelDrops == nil {
				s.TunnelDrops = map[string]uint64{}
			}
			s.TunnelDrops[src.String()] = n
		}
	}
	return s
}

// peerStatuses are the /status lines of every peer, by subnet: its path,
// and on WireGuard its handshake, traffic and where it is reached. The
// caller holds o.mu.
func (o *observer) peerStatuses(onDemand bool) []status.Peer {
	var out []status.Peer
	handshakes := map[string]wgtypes.Peer{}
	if wg, ok := backends.As[backends.DeviceStatus](o.backend); ok {
		if dev, err := wg.Status(); err == nil {
			for _, p := range dev.Peers {
				for _, a := range p.AllowedIPs {
					handshakes[a.String()] = p
				}
			}
		}
	}
	var relays, trials map[string]string
	if observer, ok := backends.As[backends.EndpointObserver](o.backend); ok {
		relays, trials = observer.Relays(), observer.Trials()
	}
	each := func(p *mesh.Peer) {
		path := o.paths.Of(*p)
		ps := status.Peer{Lease: p.Key, Subnet: p.Subnet.String(), PublicIP: p.PublicIP.String(), State: "programmed",
			Path: path.Name, Encrypted: path.Encrypted, InClear: path.Why}
		if p.IPv6Subnet().IsValid() {
			ps.IPv6Subnet, ps.PublicIPv6 = p.IPv6Subnet().String(), p.PublicIPv6().String()
		}
		if wp, ok := handshakes[p.Subnet.String()]; ok {
			ps.RxBytes, ps.TxBytes = wp.ReceiveBytes, wp.TransmitBytes
			if wp.Endpoint != nil {
				ps.Via, ps.Endpoint = "direct", wp.Endpoint.String()
			}
			if r := relays[p.Key]; r != "" {
				ps.Via = "relay " + r
			}
			if r := trials[p.Key]; r != "" {
				ps.Via = "trying direct (asked by relay " + r + ")"
			}
			if wp.LastHandshakeTime.IsZero() {
				ps.State = "no handshake"
			} else {
				ps.LastHandshake = wp.LastHandshakeTime.UTC().Format(time.RFC3339)
				ps.State = "handshake " + time.Since(wp.LastHandshakeTime).Round(time.Second).String() + " ago"
			}
		} else if onDemand {
			ps.State = "idle (configured on demand)"
		} else if o.btype == backends.WireGuard {
			ps.State = "not on the device"
		}
		out = append(out, ps)
	}
	if o.reconciler != nil {
		o.reconciler.EachPeer(each)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Subnet < out[j].Subnet })
	return out
}

var (
	descLease = prometheus.NewDesc("weft_lease_info",
		"This host's lease (always 1), one series per address family.",
		[]string{"subnet", "public_ip", "backend", "family"}, nil)
	descExpiry = prometheus.NewDesc("weft_lease_expiry_seconds",
		"Unix time the lease expires unless renewed.", nil, nil)
	descReady = prometheus.NewDesc("weft_ready", "1 once the data path has been programmed.", nil, nil)
	descPeers = prometheus.NewDesc("weft_peers", "Leases by state: peer (programmed) or skipped (invalid).",
		[]string{"state"}, nil)
	descPaths = prometheus.NewDesc("weft_peer_paths",
		"Peers by the path that carries their traffic (the backend, or direct for DirectRouting) and whether it is "+
			"encrypted.", []string{"path", "encrypted"}, nil)
	descRuns    = prometheus.NewDesc("weft_reconcile_runs_total", "Reconcile runs.", nil, nil)
	descErrors  = prometheus.NewDesc("weft_reconcile_errors_total", "Reconcile runs that met an error.", nil, nil)
	descRelists = prometheus.NewDesc("weft_etcd_watch_restarts_total",
		"Times the lease watch had to list again (compaction, outage).", nil, nil)
	descConflicts = prometheus.NewDesc("weft_lease_conflicts_total",
		"Times this host's lease was overwritten by another writer and taken back.", nil, nil)
	descRx = prometheus.NewDesc("weft_wireguard_peer_receive_bytes_total",
		"Bytes received from a WireGuard peer.", []string{"subnet"}, nil)
	descTx = prometheus.NewDesc("weft_wireguard_peer_transmit_bytes_total", "Bytes sent to a WireGuard peer.",
		[]string{"subnet"}, nil)
	descHandshake = prometheus.NewDesc("weft_wireguard_peer_last_handshake_seconds",
		"Unix time of the last handshake with a peer (0: none).", []string{"subnet"}, nil)
	descCalls = prometheus.NewDesc("weft_kernel_calls_total",
		"Calls weft made to program the data path, by kind (netlink dump/get/write, WireGuard device read/write).",
		[]string{"kind"}, nil)
	descFull = prometheus.NewDesc("weft_reconcile_whole_applies_total",
		"Reconcile runs that applied the whole state (start, resync, relist, errors); "+
			"the others applied one change as a delta.", nil, nil)
	descOnDemand = prometheus.NewDesc("weft_wireguard_peers",
		"WireGuard peers the leases name, by state: configured on the device or idle (on-demand mode).",
		[]string{"state"}, nil)
	descNATNotEager = prometheus.NewDesc("weft_wireguard_nat_not_eager_peers",
		"Peers whose leases say they are behind NAT beyond the bound on those configured eagerly (256): "+
			"configured only for traffic.", nil, nil)
	descConfigNotFollowed = prometheus.NewDesc("weft_config_not_followed",
		"1 when this host does not follow the network config in etcd (-require-encryption refused it, or a switch into the "+
			"extension backend waits for a restart): weftctl status says what.", nil, nil)
	descRelayPairs = prometheus.NewDesc("weft_relay_pairs",
		"Pairs of hosts behind NAT this host forwards WireGuard ciphertext for.", nil, nil)
	descRelayDatagrams = prometheus.NewDesc("weft_relay_datagrams_total",
		"Datagrams this host's relay forwarder forwarded or dropped, by result.", []string{"result"}, nil)
	descRelayBytes = prometheus.NewDesc("weft_relay_forwarded_bytes_total",
		"Bytes this host's relay forwarder forwarded.", nil, nil)
	descOnDemandOp = prometheus.NewDesc("weft_wireguard_on_demand_total",
		"On-demand mode events: peers added for traffic, activations refused by the rate bound (capped), peers removed "+
			"for idleness (idled), activations by data packets refused while 128 peers were held or the peer was kicked "+
			"in the last 10 s (refused_unverified), peers removed because they did not show they were the peer in time "+
			"(expired_unverified), handshake initiations that failed their proof (forged_initiation) or were replays "+
			"(replayed_initiation).", []string{"event"}, nil)
	descTunnelDrop = prometheus.NewDesc("weft_tunnel_dropped_packets_total",
		"VXLAN and IP-in-IP packets dropped because their source holds no lease, by source (sources seen in the last "+
			"ten minutes).", []string{"source"}, nil)
	descFilterInPlace = prometheus.NewDesc("weft_tunnel_filter_in_place",
		"1 while the tunnel source filter (vxlan, ipip) is in place, 0 while it is gone and cannot be put back.", nil, nil)
	descStrict = prometheus.NewDesc("weft_strict_dropped_packets_total",
		"Packets to other hosts' subnets that strict encryption dropped because they would have left unencrypted.", nil, nil)
	descUDPDropped = prometheus.NewDesc("weft_udp_dropped_datagrams_total",
		"Datagrams the udp backend refused, by reason.", []string{"reason"}, nil)
)

// Describe implements prometheus.Collector.
func (o *observer) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLease, descExpiry, descReady, descPeers, descRuns, descErrors, descRelists,
		descConflicts, descRx, descTx, descHandshake, descUDPDropped, descTunnelDrop, descCalls, descFull, descOnDemand,
		descOnDemandOp, descNATNotEager, descRelayPairs, descRelayDatagrams, descRelayBytes, descConfigNotFollowed} {
		ch <- d
	}
	ch <- descPaths
	ch <- descStrict
	ch <- descFilterInPlace
	o.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (o *observer) Collect(ch chan<- prometheus.Metric) {
	o.mu.Lock()
	perPeer, rule, reconciler := o.btype == backends.WireGuard, o.paths, o.reconciler
	o.mu.Unlock()
	// Only WireGuard has series per peer; the others' peers are counted
	// where they are kept, not copied into a document first.
	s := o.document(perPeer)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	ready := 0.0
	if s.Ready {
		ready = 1
	}
	gauge(descReady, ready)
	if inPlace, guarded := o.tunnelFilterInPlace(); guarded {
		gauge(descFilterInPlace, map[bool]float64{true: 1}[inPlace])
	}
	o.mu.Lock()
	holder, watcher := o.holder, o.watcher
	o.mu.Unlock()
	if holder != nil {
		own := holder.Current()
		gauge(descLease, 1, s.Subnet, s.PublicIP, s.Backend, "ipv4")
		if s.IPv6Subnet != "" {
			gauge(descLease, 1, s.IPv6Subnet, s.PublicIPv6, s.Backend, "ipv6")
		}
		gauge(descExpiry, float64(own.Expiration.Unix()))
		counter(descConflicts, float64(holder.Conflicts()))
	}
	if watcher != nil {
		counter(descRelists, float64(max(watcher.Relists()-1, 0)))
	}
	type pathKey struct {
		path      string
		encrypted bool
	}
	paths := map[pathKey]int{}
	peers, skipped := len(s.Peers), len(s.Skipped)
	for _, p := range s.Peers {
		paths[pathKey{p.Path, p.Encrypted}]++
	}
	if !perPeer && reconciler != nil {
		skipped = reconciler.EachPeer(func(p *mesh.Peer) {
			path := rule.Of(*p)
			paths[pathKey{path.Name, path.Encrypted}]++
			peers++
		})
	}
	gauge(descPeers, float64(peers), "peer")
	gauge(descPeers, float64(skipped), "skipped")
	for k, n := range paths {
		gauge(descPaths, float64(n), k.path, strconv.FormatBool(k.encrypted))
	}
	counter(descRuns, float64(s.Reconciles))
	counter(descErrors, float64(s.Errors))
	counter(descFull, float64(s.WholeApplies))
	for kind, n := range o.calls.Snapshot() {
		counter(descCalls, float64(n), kind)
	}
	for _, p := range s.Peers {
		if s.Backend != backends.WireGuard {
			break
		}
		counter(descRx, float64(p.RxBytes), p.Subnet)
		counter(descTx, float64(p.TxBytes), p.Subnet)
		hs := 0.0
		if t, err := time.Parse(time.RFC3339, p.LastHandshake); err == nil {
			hs = float64(t.Unix())
		}
		gauge(descHandshake, hs, p.Subnet)
	}
	if s.Strict != nil {
		counter(descStrict, float64(s.Strict.Dropped))
	}
	for reason, n := range s.Drops {
		counter(descUDPDropped, float64(n), reason)
	}
	for source, n := range s.TunnelDrops {
		counter(descTunnelDrop, float64(n), source)
	}
	if od := s.OnDemand; od != nil {
		gauge(descOnDemand, float64(od.Configured), "configured")
		gauge(descOnDemand, float64(od.Known-od.Configured), "idle")
		counter(descOnDemandOp, float64(od.Added), "added")
		counter(descOnDemandOp, float64(od.Capped), "capped")
		counter(descOnDemandOp, float64(od.Idled), "idled")
		counter(descOnDemandOp, float64(od.Refused), "refused_unverified")
		counter(descOnDemandOp, float64(od.Expired), "expired_unverified")
		counter(descOnDemandOp, float64(od.Forged), "forged_initiation")
		counter(descOnDemandOp, float64(od.Replayed), "replayed_initiation")
		gauge(descNATNotEager, float64(od.NATNotEager))
	}
	gauge(descConfigNotFollowed, map[bool]float64{true: 1}[s.ConfigNotFollowed != ""])
	if r := s.Relay; r != nil {
		gauge(descRelayPairs, float64(len(r.Pairs)))
		counter(descRelayDatagrams, float64(r.Forwarded), "forwarded")
		counter(descRelayDatagrams, float64(r.NotWireGuard), "not_wireguard")
		counter(descRelayDatagrams, float64(r.UnknownEnd), "unknown_end")
		counter(descRelayDatagrams, float64(r.OverRate), "over_rate")
		counter(descRelayBytes, float64(r.ForwardedBytes))
	}
	o.duration.Collect(ch)
}

// tunnelFilterInPlace reports whether the backend's tunnel source filter
// is in place; guarded is false for a backend without one.
func (o *observer) tunnelFilterInPlace() (inPlace, guarded bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	k, ok := backends.As[backends.FilterKeeper](o.backend)
	if !ok {
		return false, false
	}
	return k.FilterInPlace(), true
}

// handlers adds /readyz, /status and /metrics to mux.
func (o *observer) handlers(mux *http.ServeMux) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(o)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !o.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if inPlace, guarded := o.tunnelFilterInPlace(); guarded && !inPlace {
			http.Error(w, "not ready: the tunnel source filter is gone and cannot be put back", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(o.status())
	})
}
