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

// hostileLeases are leases no host can be behind, each in a subnet of its
// own that no lab host holds, for backend: PublicIPs that point nowhere,
// and BackendData that decodes but cannot be used.
func hostileLeases(t *testing.T, l *Lab, backend string) map[string]string {
	t.Helper()
	out := map[string]string{}
	free := freeKeys(l, 8)
	n := 0
	add := func(publicIP, data string) {
		key := free[n]
		n++
		out[key] = fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":%q%s}`, publicIP, leaseTypeOf(backend), data)
	}
	for _, ip := range []string{"0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.1.1", "10.5.7.9"} {
		add(ip, fakeBackendData(t, backend, n))
	}
	switch backend {
	case backends.VXLAN:
		add("192.168.50.90", `,"BackendData":{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`)
		add("192.168.50.91", `,"BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`)
	case backends.WireGuard:
		add("192.168.50.90", `,"BackendData":{"PublicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","Port":51820}`)
		add("192.168.50.91", fmt.Sprintf(`,"BackendData":{"PublicKey":%q,"Port":0}`, newPublicKey(t)))
	}
	return out
}

// checkHostileLeases writes hostile leases next to the real hosts: none of
// them reaches the kernel (routes, neighbours, FDB, WireGuard peers) or
// the udp peer table, traffic between the real hosts loses nothing, and
// each is warned about once, not once per resync.
func checkHostileLeases(t *testing.T, l *Lab, backend string) {
	ctx := context.Background()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	offset := h1.LogOffset()
	done := pingFor(h1, h2, 6*time.Second)
	hostile := hostileLeases(t, l, backend)
	for key, value := range hostile {
		if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Second) // two resyncs and more
	if sent, lost := done(); sent == 0 || lost > 0 {
		t.Errorf("real hosts lost %d of %d pings while hostile leases were written", lost, sent)
	}
	status, _ := HTTPGet(h1.Name, "http://127.0.0.1:8471/status")
	entries := strings.Join(programmed(l, h1, backend), "\n")
	for key := range hostile {
		subnet := strings.TrimSuffix(key, "-24")
		if strings.Contains(entries, subnet) {
			t.Errorf("hostile lease %s reached the kernel:\n%s", key, entries)
		}
		if strings.Contains(status, `"lease":"`+key+`"`) {
			t.Errorf("hostile lease %s is a peer in weftd's status", key)
		}
		log := h1.LogTailFrom(offset)
		if n := strings.Count(log, "key="+key); n != 1 {
			t.Errorf("%d warnings for %s, want 1", n, key)
		}
	}
	for key := range hostile {
		l.Store().Delete(ctx, key)
	}
}

// newPublicKey is a fresh WireGuard public key no host holds.
func newPublicKey(t *testing.T) string {
	t.Helper()
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Public().String()
}

// leaseTypeOf is the BackendType a host on backend writes in its lease.
func leaseTypeOf(backend string) string {
	kind, _ := backends.Lookup(backend)
	return lease.BackendConfig{Type: backend, Untyped: kind.Untyped}.LeaseType()
}
