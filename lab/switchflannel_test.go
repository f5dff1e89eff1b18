package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// flannelVXLAN stands in for flanneld's vxlan backend on h: flannel.1 as
// flanneld builds it, its lease as flanneld writes it, and, every 200 ms,
// its routes, neighbours and FDB entries rebuilt from the leases by
// flannel's rule: a lease whose BackendType is vxlan, with its VNI and
// VtepMAC, is a peer; any other lease is not (flannel's vxlan skips it).
type flannelVXLAN struct {
	h    *Host
	mac  string
	stop chan struct{}
	done chan struct{}
}

func startFlannelVXLAN(t *testing.T, l *Lab, h *Host) *flannelVXLAN {
	t.Helper()
	ctx := context.Background()
	subnet := netip.MustParsePrefix("10.5.250.0/24")
	for _, o := range l.Hosts {
		if o.Subnet == subnet {
			subnet = netip.MustParsePrefix("10.5.251.0/24")
		}
	}
	h.Subnet = subnet
	f := &flannelVXLAN{h: h, mac: "5e:fd:b7:a1:37:a8", stop: make(chan struct{}), done: make(chan struct{})}
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, h.PublicIP, f.mac)
	if _, err := l.Store().Create(ctx, lease.SubnetKey(subnet), []byte(value), time.Hour); err != nil {
		t.Fatal(err)
	}
	ns := h.Name
	if err := RunAll(
		[]string{"ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		[]string{"ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", h.PublicIP.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
		[]string{"ip", "-n", ns, "link", "set", "flannel.1", "mtu", "1450", "address", f.mac, "up"},
		[]string{"ip", "-n", ns, "addr", "add", subnet.Addr().String() + "/32", "dev", "flannel.1"},
	); err != nil {
		t.Fatal(err)
	}
	if err := lease.WriteSubnetFile(h.SubnetFile(), lease.SubnetEnv{Network: netip.MustParsePrefix(DefaultNetwork), Subnet: subnet, MTU: 1450}); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h); err != nil {
		t.Fatal(err)
	}
	go f.follow(l)
	t.Cleanup(func() { close(f.stop); <-f.done })
	return f
}

// follow rebuilds the flannel host's entries from the leases until stop.
func (f *flannelVXLAN) follow(l *Lab) {
	defer close(f.done)
	routed := map[netip.Prefix]bool{}
	for {
		recs, _, err := l.Store().List(context.Background())
		if err == nil {
			want := map[netip.Prefix]bool{}
			for _, r := range recs {
				le, err := lease.DecodeLease(r.Key, r.Value)
				if err != nil || le.Subnet == f.h.Subnet || le.Attrs.BackendType != "vxlan" {
					continue
				}
				var data struct {
					VNI     int
					VtepMAC string
				}
				if json.Unmarshal(le.Attrs.BackendData, &data) != nil || data.VNI != 1 || data.VtepMAC == "" {
					continue
				}
				want[le.Subnet] = true
				vtep := le.Subnet.Addr().String()
				RunAll(
					[]string{"ip", "-n", f.h.Name, "neigh", "replace", vtep, "lladdr", data.VtepMAC, "dev", "flannel.1", "nud", "permanent"},
					[]string{"ip", "netns", "exec", f.h.Name, "bridge", "fdb", "replace", data.VtepMAC, "dev", "flannel.1", "dst", le.Attrs.PublicIP.String(), "self", "permanent"},
					[]string{"ip", "-n", f.h.Name, "route", "replace", le.Subnet.String(), "via", vtep, "dev", "flannel.1", "onlink"})
			}
			for s := range routed {
				if !want[s] {
					RunAll([]string{"ip", "-n", f.h.Name, "route", "del", s.String()})
				}
			}
			routed = want
		}
		select {
		case <-f.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestLiveSwitchBesideFlannel: three weft hosts switch from vxlan to
// wireguard beside a host that stays on flannel's vxlan (it reads only
// BackendType, VNI and VtepMAC, as flanneld does). Every pair keeps
// reaching every other throughout; afterwards the weft pairs are
// encrypted, and weftctl status and /metrics show the flannel host's peer
// as in clear over vxlan, with one log line naming why.
func TestLiveSwitchBesideFlannel(t *testing.T) {
	l := newLab(t, Options{Hosts: 4, Backend: backends.VXLAN, WeftdHosts: 3})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	h1, h2, h4 := l.Hosts[0], l.Hosts[1], l.Hosts[3]
	startFlannelVXLAN(t, l, h4)
	eventually(t, "full ping matrix with the flannel host", 20*time.Second, func() error {
		if matrix, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("%s", matrix)
		}
		return nil
	})
	pingers := startPingers(t, l)
	time.Sleep(time.Second)
	if err := l.PutConfig(context.Background(), fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, backends.WireGuard)); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts[:3] {
		if _, _, err := h.WaitLogLine(0, 20*time.Second, "switching backend: published"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(6 * time.Second) // past the settle and retirement times: vxlan must stay for the flannel host
	stopPingers(t, pingers, "switch to wireguard beside a flannel host")

	out, err := Exec(h1.Name, weftctlBin, "status")
	if err != nil || !lineWith(out, lease.SubnetKey(h2.Subnet), "wireguard", "yes") ||
		!lineWith(out, lease.SubnetKey(h4.Subnet), "vxlan", "NO (its lease names the vxlan backend, which does not encrypt)") {
		t.Errorf("weftctl status (%v):\n%s", err, out)
	}
	metrics, err := HTTPGet(h1.Name, "http://127.0.0.1:8471/metrics")
	if err != nil || !strings.Contains(metrics, `weft_peer_paths{encrypted="false",path="vxlan"} 1`) ||
		!strings.Contains(metrics, `weft_peer_paths{encrypted="true",path="wireguard"} 2`) {
		t.Errorf("/metrics does not count 1 vxlan peer in clear and 2 wireguard ones (%v):\n%s", err, grepLines(metrics, "weft_peer_paths"))
	}
	log, _ := os.ReadFile(h1.LogPath())
	if n := strings.Count(string(log), `msg="peer in clear" lease=`+lease.SubnetKey(h4.Subnet)); n < 1 {
		t.Errorf("no log line says the flannel host is in clear")
	}
	checkEncrypted(t, l, h1, h2)
}

// grepLines are text's lines that hold s.
func grepLines(text, s string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
