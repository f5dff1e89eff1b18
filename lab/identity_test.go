package lab

import (
	"context"
	"fmt"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// TestAddressChange: a host is recognised by its host ID, not its
// address. Its underlay address changes while weftd runs (renumbered, as
// DHCP does): weftd takes the new one up without a restart, its lease is
// rewritten in place with the same subnet, and every pair reaches it
// again within 5 s. The same across a restart with a new address, and
// when its interface is deleted and added again.
func TestAddressChange(t *testing.T) {
	for _, backend := range []string{backends.VXLAN, backends.WireGuard} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			l := startCluster(t, Options{Hosts: 3, Backend: backend})
			h1 := l.Hosts[0]
			subnet, pid := h1.Subnet, l.WeftdPID(h1)
			data := leaseOf(t, l, subnet).Attrs.BackendData

			renumber(t, h1, l.underlayAddr(61))
			gap := waitReachable(t, l, h1, subnet, 5*time.Second)
			reliability(t, "%s: address changed while weftd runs: every pair reached the host again after %s", backend, gap.Round(time.Millisecond))
			if now := leaseOf(t, l, subnet).Attrs.BackendData; string(now) != string(data) {
				t.Errorf("BackendData changed from %s to %s (the VTEP MAC or key must stay)", data, now)
			}
			if l.WeftdPID(h1) != pid {
				t.Errorf("weftd restarted to take the new address up")
			}

			l.StopWeftd(h1, syscall.SIGTERM)
			renumber(t, h1, l.underlayAddr(62))
			if err := l.StartWeftd(h1); err != nil {
				t.Fatal(err)
			}
			waitReachable(t, l, h1, subnet, 20*time.Second)
			if now := leaseOf(t, l, subnet).Attrs.BackendData; string(now) != string(data) {
				t.Errorf("BackendData changed from %s to %s (the VTEP MAC or key must stay)", data, now)
			}

			// The interface deleted and added again, with the same address:
			// another interface index, which the vxlan device is bound to.
			port := fmt.Sprintf("h%d", h1.Index)
			if err := RunAll(
				[]string{"ip", "-n", l.Underlay, "link", "del", port},
				[]string{"ip", "-n", l.Underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h1.Name},
				[]string{"ip", "-n", l.Underlay, "link", "set", port, "master", "br0", "up"},
				[]string{"ip", "-n", h1.Name, "addr", "add", h1.PublicIP.String() + "/24", "dev", "eth0"},
				[]string{"ip", "-n", h1.Name, "link", "set", "eth0", "up"},
				[]string{"ip", "-n", h1.Name, "route", "add", "default", "via", l.underlayAddr(1).String()},
			); err != nil {
				t.Fatal(err)
			}
			waitReachable(t, l, h1, subnet, 20*time.Second)
			if now := leaseOf(t, l, subnet).Attrs.BackendData; string(now) != string(data) {
				t.Errorf("BackendData changed from %s to %s (the VTEP MAC or key must stay)", data, now)
			}
		})
	}
}

// renumber gives h the underlay address addr in place of its own, as a
// DHCP client renewing with another address does: the new one added, the
// old one removed (promote_secondaries keeps the routes).
func renumber(t *testing.T, h *Host, addr netip.Addr) {
	t.Helper()
	if err := RunAll(
		[]string{"ip", "netns", "exec", h.Name, "sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"},
		[]string{"ip", "-n", h.Name, "addr", "add", addr.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", h.Name, "addr", "del", h.PublicIP.String() + "/24", "dev", "eth0"},
	); err != nil {
		t.Fatal(err)
	}
	h.PublicIP = addr
}

// leaseOf is the lease of subnet as the store holds it now.
func leaseOf(t *testing.T, l *Lab, subnet netip.Prefix) lease.Lease {
	t.Helper()
	rec, ok, err := l.Store().Get(context.Background(), lease.SubnetKey(subnet))
	if err != nil || !ok {
		t.Fatalf("no lease %s: %v", subnet, err)
	}
	got, err := lease.DecodeLease(rec.Key, rec.Value)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// waitReachable waits until h's lease holds subnet at its current address
// and every pair pings, and returns how long that took.
func waitReachable(t *testing.T, l *Lab, h *Host, subnet netip.Prefix, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	eventually(t, h.Name+" reachable at "+h.PublicIP.String()+" with "+subnet.String(), timeout, func() error {
		rec, ok, err := l.Store().Get(context.Background(), lease.SubnetKey(subnet))
		if err != nil || !ok {
			return fmt.Errorf("no lease %s: %v", subnet, err)
		}
		if got, err := lease.DecodeLease(rec.Key, rec.Value); err != nil || got.Attrs.PublicIP != h.PublicIP {
			return fmt.Errorf("lease %s is %s", rec.Key, rec.Value)
		}
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	return time.Since(start)
}
