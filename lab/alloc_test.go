package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// TestAllocCluster: flannel's alloc backend leases subnets and writes the
// subnet file, and nothing else: each lease is written as flannel's alloc
// writes it (no BackendType, no BackendData), the subnet file carries the
// external MTU in flannel's four lines, and no device or route of weft's
// appears on a host.
func TestAllocCluster(t *testing.T) {
	l := newLab(t, Options{Hosts: 2, Backend: backends.Alloc})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkLeaseValues(t, l, func(h *Host) string { return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null}`, h.PublicIP) })
	for _, h := range l.Hosts {
		data, _ := os.ReadFile(h.SubnetFile())
		wantEnv := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n", DefaultNetwork,
			fmt.Sprintf("%s/%d", h.Subnet.Addr().Next(), h.Subnet.Bits()))
		if string(data) != wantEnv {
			t.Errorf("%s: subnet file\n%s\nwant\n%s", h.Name, data, wantEnv)
		}
		if out, _ := Exec(h.Name, "ip", "-o", "link"); strings.Contains(out, "weft") {
			t.Errorf("%s: a weft device on an alloc host:\n%s", h.Name, out)
		}
		if out, _ := Exec(h.Name, "ip", "route", "show", "proto", "87"); out != "" {
			t.Errorf("%s: weft routes on an alloc host:\n%s", h.Name, out)
		}
	}
}

// checkLeaseValues checks that every host's lease holds exactly the value
// want gives for it (flannel's bytes).
// flannelFields is a weft host's lease value as flannel reads it: without
// the fields weft adds last, h's host ID first, then when and by which
// identity it is signed, and the signature.
func flannelFields(t *testing.T, h *Host, value []byte) string {
	t.Helper()
	id, err := os.ReadFile(filepath.Join(h.Dir, keys.HostIDFile))
	weft := `,"WeftHostID":"` + strings.TrimSpace(string(id)) + `","WeftSigned":`
	at := strings.Index(string(value), weft)
	if err != nil || at < 0 || !strings.Contains(string(value[at:]), `"WeftIdentity":"`) ||
		!strings.Contains(string(value[at:]), `"WeftSig":"`) || !strings.HasSuffix(string(value), `"}`) {
		t.Errorf("%s's lease %s does not end with its host ID and signature (%v)", h.Name, value, err)
		return string(value)
	}
	return string(value[:at]) + "}"
}

func checkLeaseValues(t *testing.T, l *Lab, want func(h *Host) string) {
	t.Helper()
	records, _, err := l.Store().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		key, value := lease.SubnetKey(h.Subnet), want(h)
		found := false
		for _, r := range records {
			found = found || r.Key == key && flannelFields(t, h, r.Value) == value
		}
		if !found {
			t.Errorf("%s: no lease %s = %s in %v", h.Name, key, value, records)
		}
	}
}

// TestAllocDualStack: alloc on a dual-stack network leases both halves
// and writes them to the subnet file, as flannel's alloc does; still no
// device or route of weft's.
func TestAllocDualStack(t *testing.T) {
	l := newLab(t, Options{Hosts: 2, Backend: backends.Alloc, IPv6: true})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		env, err := lease.ReadSubnetFile(h.SubnetFile())
		if err != nil || env.Subnet != h.Subnet || !h.IPv6Subnet.IsValid() || env.IPv6Subnet != h.IPv6Subnet {
			t.Errorf("%s: subnet file %+v (%v); lease %s & %s", h.Name, env, err, h.Subnet, h.IPv6Subnet)
		}
		if out, _ := Exec(h.Name, "ip", "-o", "link"); strings.Contains(out, "weft") {
			t.Errorf("%s: a weft device on an alloc host:\n%s", h.Name, out)
		}
		if out, _ := Exec(h.Name, "ip", "-6", "route", "show", "proto", "87"); out != "" {
			t.Errorf("%s: weft IPv6 routes on an alloc host:\n%s", h.Name, out)
		}
	}
}
