package lab

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// TestLeaseHijackTakenBack: whoever can write etcd overwrites a host's
// lease with their own PublicIP and WireGuard key; the owner takes it back
// with its subnet unchanged, counts it, and traffic to it resumes.
func TestLeaseHijackTakenBack(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard})
	ctx := context.Background()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	key := lease.SubnetKey(h2.Subnet)
	rec, ok, err := l.Store().Get(ctx, key)
	if err != nil || !ok {
		t.Fatal(err)
	}
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	hijack := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820}}`,
		l.underlayAddr(200), k.Public())
	start := time.Now()
	if _, err := l.Store().Replace(ctx, rec, []byte(hijack), time.Hour); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the lease back with its owner", 20*time.Second, func() error {
		r, ok, err := l.Store().Get(ctx, key)
		if err != nil || !ok || !strings.Contains(string(r.Value), `"PublicIP":"`+h2.PublicIP.String()+`"`) {
			return fmt.Errorf("lease %s: %s (%v)", key, r.Value, err)
		}
		return nil
	})
	back := time.Since(start)
	eventually(t, "traffic to the owner resumes", 20*time.Second, func() error { return l.Ping(h1, h2) })
	reliability(t, "lease hijack: the owner took its lease back in %s, traffic to it resumed after %s, subnet unchanged",
		back.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	env, err := lease.ReadSubnetFile(h2.SubnetFile())
	if err != nil || env.Subnet != h2.Subnet {
		t.Errorf("h2's subnet file says %v (%v), it had %s", env.Subnet, err, h2.Subnet)
	}
	metrics, err := HTTPGet(h2.Name, "http://127.0.0.1:8471/metrics")
	if err != nil || !strings.Contains(metrics, "weft_lease_conflicts_total 1") {
		t.Errorf("weft_lease_conflicts_total not 1: %v\n%s", err, metrics)
	}
	if _, _, err := h2.WaitLogLine(0, time.Second, "overwritten by another writer", key, l.underlayAddr(200).String()); err != nil {
		t.Errorf("no error log naming the key and the writer's PublicIP: %v", err)
	}
}

// switchBackend puts a config with backend and waits until every host
// runs it, without restarting weftd (a live switch).
func switchBackend(t *testing.T, l *Lab, backend string) {
	t.Helper()
	if err := l.PutConfig(context.Background(), fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, backend)); err != nil {
		t.Fatal(err)
	}
	waitSwitched(t, l, backend)
	eventually(t, "traffic on "+backend, 20*time.Second, func() error { return l.Ping(l.Hosts[0], l.Hosts[1]) })
}

// TestSwitchToWireGuardEncrypts switches a running udp cluster to
// wireguard and back with the config alone: udp's device is removed once
// no peer needs it (and the log says so), after the switch no container
// packet crosses the underlay in clear, and after the switch back traffic
// flows on udp and weft-wg is gone. (TestLiveSwitch measures the gaps.)
func TestSwitchToWireGuardEncrypts(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.UDP})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	offset := h1.LogOffset()
	switchBackend(t, l, backends.WireGuard)
	if _, _, err := h1.WaitLogLine(offset, time.Second, "no peer needs the previous backend", "removed=udp"); err != nil {
		t.Errorf("no log line about udp's retirement: %v\n%s", err, h1.LogTail(15))
	}
	if out, err := Exec(h1.Name, "ip", "link", "show", "weft0"); err == nil {
		t.Errorf("udp's device stays after the switch to wireguard: %s", out)
	}
	checkEncrypted(t, l, h1, h2)
	switchBackend(t, l, backends.UDP)
	if out, err := Exec(h1.Name, "ip", "link", "show", "weft-wg"); err == nil {
		t.Errorf("weft-wg left after switching back to udp: %s", out)
	}
}
