package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

func TestIPMasqAndCleanup(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.HostGW, WeftdArgs: []string{"-ip-masq", "-iptables-resync", "1"}})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	outside := netip.AddrPortFrom(l.underlayAddr(1), 7000) // the underlay's gateway, outside the Network

	t.Run("leaving the Network is masqueraded, inside it is not", func(t *testing.T) {
		checkMasquerade(t, l, h1, outside, h1.PublicIP, netip.AddrPortFrom(h2.ContainerIP(), 7001), h2, h1.ContainerIP())
	})

	t.Run("rules deleted by hand come back", func(t *testing.T) {
		for _, args := range [][]string{
			{"iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "weft masq", "-j", "WEFT-POSTRTG"},
			{"iptables", "-t", "nat", "-F", "WEFT-POSTRTG"},
			{"iptables", "-t", "filter", "-F", "WEFT-FWD"},
		} {
			if _, err := Exec(h1.Name, args...); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		eventually(t, "rules restored", 10*time.Second, func() error {
			out, _ := Exec(h1.Name, "iptables-save")
			for _, want := range []string{`-A POSTROUTING -m comment --comment "weft masq" -j WEFT-POSTRTG`, "-j MASQUERADE", `--comment "weft forward" -j ACCEPT`} {
				if !strings.Contains(out, want) {
					return fmt.Errorf("no %q yet", want)
				}
			}
			return nil
		})
		t.Logf("rules restored after %s (-iptables-resync 1)", time.Since(start).Round(time.Millisecond))
	})

	t.Run("weftctl cleanup leaves nothing of weft", func(t *testing.T) {
		l.StopWeftd(h1, syscall.SIGTERM)
		if out, err := Exec(h1.Name, weftctlBin, "cleanup", "-subnet-file", h1.SubnetFile()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, _ := Exec(h1.Name, "ip", "route", "show", "proto", "87"); out != "" {
			t.Errorf("routes left: %s", out)
		}
		if out, _ := Exec(h1.Name, "iptables-save"); strings.Contains(strings.ToLower(out), "weft") {
			t.Errorf("rules left:\n%s", out)
		}
		if out, _ := Exec(h1.Name, "ip", "-o", "link"); strings.Contains(out, "weft") {
			t.Errorf("devices left:\n%s", out)
		}
		if out, _ := Exec(h1.Name, "nft", "list", "ruleset"); strings.Contains(out, "weft") {
			t.Errorf("nftables left:\n%s", out)
		}
		if _, err := os.Stat(h1.SubnetFile()); err == nil {
			t.Error("subnet file left")
		}
	})
}

// checkMasquerade sends a datagram from from's container to outside (in
// the underlay namespace), which must arrive from masqAs, and one to
// inside (in to's container), which must keep its source, keepAs.
func checkMasquerade(t *testing.T, l *Lab, from *Host, outside netip.AddrPort, masqAs netip.Addr, inside netip.AddrPort, to *Host, keepAs netip.Addr) {
	t.Helper()
	for _, c := range []struct {
		ns   string
		dst  netip.AddrPort
		want netip.Addr
	}{{l.Underlay, outside, masqAs}, {to.Container, inside, keepAs}} {
		got, err := ReceiveUDP(c.ns, c.dst, time.Second, func() {
			if err := SendUDP(from.Container, c.dst, []byte("hello")); err != nil {
				t.Error(err)
			}
		})
		if src := netip.AddrPortFrom(c.want, 0).String(); err != nil || len(got) != 1 || !strings.Contains(got[0], "from "+strings.TrimSuffix(src, ":0")+":") {
			t.Errorf("receiver at %s got %v (%v), want one datagram from %s", c.dst, got, err, c.want)
		}
	}
}

// TestLeasesStatusMetrics checks what operators look at against the truth
// of a 3-host wireguard lab.
func TestLeasesStatusMetrics(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard})
	h1 := l.Hosts[0]

	out, err := Exec(h1.Name, weftctlBin, "-etcd-endpoints", l.EtcdEndpoint(), "leases", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Subnet   string `json:"subnet"`
		PublicIP string `json:"public_ip"`
		Signed   bool   `json:"signed"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	truth := map[string]string{}
	for _, h := range l.Hosts {
		truth[h.Subnet.String()] = h.PublicIP.String()
	}
	if len(rows) != 3 {
		t.Fatalf("weftctl leases lists %d leases, want 3:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if truth[r.Subnet] != r.PublicIP {
			t.Errorf("lease %s says %s, truth is %s", r.Subnet, r.PublicIP, truth[r.Subnet])
		}
		if !r.Signed {
			t.Errorf("lease %s is not signed by its host's identity (issue 42)", r.Subnet)
		}
	}
	table, _ := Exec(h1.Name, weftctlBin, "-etcd-endpoints", l.EtcdEndpoint(), "leases")
	if !strings.Contains(table, "SUBNET") || !strings.Contains(table, `"PublicKey"`) {
		t.Errorf("leases table:\n%s", table)
	}

	eventually(t, "status shows both peers with handshakes", 10*time.Second, func() error {
		out, err := Exec(h1.Name, weftctlBin, "status", "-o", "json")
		if err != nil {
			return err
		}
		var s struct {
			Ready           bool
			Subnet, Backend string
			Peers           []struct {
				Subnet, State, Path string
				Encrypted           bool
			}
		}
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return err
		}
		if !s.Ready || s.Subnet != h1.Subnet.String() || s.Backend != "wireguard" || len(s.Peers) != 2 {
			return fmt.Errorf("status %+v", s)
		}
		for _, p := range s.Peers {
			if truth[p.Subnet] == "" || !strings.HasPrefix(p.State, "handshake ") || p.Path != "wireguard" || !p.Encrypted {
				return fmt.Errorf("peer %+v", p)
			}
		}
		return nil
	})
	if human, err := Exec(h1.Name, weftctlBin, "status"); err != nil || !strings.Contains(human, "weftd ready") {
		t.Errorf("status table: %v\n%s", err, human)
	}

	metrics, err := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
	if err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(metrics))
	if err != nil {
		t.Fatalf("metrics do not parse: %v", err)
	}
	for _, name := range []string{"weft_lease_info", "weft_lease_expiry_seconds", "weft_ready", "weft_peers", "weft_reconcile_runs_total",
		"weft_reconcile_errors_total", "weft_reconcile_duration_seconds", "weft_etcd_watch_restarts_total",
		"weft_wireguard_peer_receive_bytes_total", "weft_wireguard_peer_last_handshake_seconds",
		"weft_kernel_calls_total", "weft_reconcile_whole_applies_total", "weft_peer_paths"} {
		if families[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	if !strings.Contains(metrics, `weft_peer_paths{encrypted="true",path="wireguard"} 2`) {
		t.Errorf("/metrics does not count the 2 encrypted wireguard peers:\n%s", metrics)
	}
	if key, _ := os.ReadFile(filepath.Join(h1.Dir, "wg.key")); strings.Contains(metrics, strings.TrimSpace(string(key))) {
		t.Error("the private key appears in /metrics")
	}
	// The endpoints listen on loopback only: the underlay cannot reach them.
	if _, err := HTTPGet(l.Underlay, "http://"+h1.PublicIP.String()+":8471/metrics"); err == nil {
		t.Error("/metrics answers on the underlay address")
	}

	t.Run("a lease change reaches the device as a delta", func(t *testing.T) { checkDelta(t, l, h1) })
}

// checkDelta writes a lease for a made-up WireGuard peer and deletes it
// again: weftd on h logs each change applied as a delta (not a whole
// apply), and wg show agrees. A resync tick can coincide with a change and
// take it as a whole apply, so three tries need one delta each way.
func checkDelta(t *testing.T, l *Lab, h *Host) {
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().String()
	taken := map[netip.Prefix]bool{}
	for _, o := range l.Hosts {
		taken[o.Subnet] = true
	}
	ctx := context.Background()
	added, removed := false, false
	for i := 0; i < 3 && !(added && removed); i++ {
		subnet := netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", 200+i))
		if taken[subnet] {
			continue
		}
		key := lease.SubnetKey(subnet)
		value := fmt.Sprintf(`{"PublicIP":"192.168.50.%d","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820}}`, 200+i, pub)
		for _, present := range []bool{true, false} {
			off := h.LogOffset()
			if present {
				_, err = l.Store().Create(ctx, key, []byte(value), time.Minute)
			} else {
				err = l.Store().Delete(ctx, key)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, line, err := h.WaitLogLine(off, 10*time.Second, "msg=applied", key)
			if err != nil {
				t.Fatal(err)
			}
			if LogField(line, "whole") == "false" {
				added, removed = added || present, removed || !present
			}
			peers, err := l.HostExec(h, "wg", "show", "weft-wg", "peers")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(peers, pub) != present {
				t.Fatalf("after %s applied, wg show peers:\n%s", key, peers)
			}
		}
	}
	if !added || !removed {
		t.Errorf("changes applied as deltas: add %v, remove %v; want both", added, removed)
	}
}

// TestBlackholeRoute: -ip-blackhole-route keeps a blackhole route for
// each half of a dual-stack host's lease, at weft's metric beside the
// bridge's own route; one deleted by hand comes back within
// -iptables-resync; `weftctl cleanup` removes both.
func TestBlackholeRoute(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.HostGW, IPv6: true,
		WeftdArgs: []string{"-ip-blackhole-route", "-iptables-resync", "1"}})
	h := l.Hosts[0]
	routes := func() string {
		v4, _ := Exec(h.Name, "ip", "-4", "route", "show", "type", "blackhole")
		v6, _ := Exec(h.Name, "ip", "-6", "route", "show", "type", "blackhole")
		return v4 + v6
	}
	want := []string{fmt.Sprintf("blackhole %s metric 4242", h.Subnet), fmt.Sprintf("blackhole %s dev lo metric 4242", h.IPv6Subnet)}
	has := func() error {
		for _, w := range want {
			if !strings.Contains(routes(), w) {
				return fmt.Errorf("no %q in\n%s", w, routes())
			}
		}
		return nil
	}
	eventually(t, "both blackhole routes", 10*time.Second, has)
	if _, err := Exec(h.Name, "ip", "-6", "route", "del", "blackhole", h.IPv6Subnet.String(), "metric", "4242"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the IPv6 blackhole route back", 10*time.Second, has)
	if err := l.Ping(l.Hosts[1], h); err != nil {
		t.Errorf("the bridge's routes lose to the blackhole: %v", err)
	}
	l.StopWeftd(h, syscall.SIGTERM)
	if out, err := Exec(h.Name, weftctlBin, "cleanup", "-subnet-file", h.SubnetFile()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r := routes(); r != "" {
		t.Errorf("blackhole routes left after cleanup:\n%s", r)
	}
}
