package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

func TestVXLANCluster(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.VXLAN})
	ctx := context.Background()
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	t.Run("hostile leases reach no kernel", func(t *testing.T) { checkHostileLeases(t, l, backends.VXLAN) })

	t.Run("underlay carries VXLAN on 8472 with the VNI", func(t *testing.T) {
		capture, err := l.CaptureUnderlay("vxlan")
		if err != nil {
			t.Fatal(err)
		}
		_, perr := Exec(h1.Container, "ping", "-c", "3", "-i", "0.2", h2.ContainerIP().String())
		raw, decoded, err := capture.Stop()
		if perr != nil || err != nil {
			t.Fatalf("ping %v, capture %v", perr, err)
		}
		// tcpdump decodes port 8472 as OTV, whose header is VXLAN's.
		if n := strings.Count(decoded, ".8472: OTV, flags [I] (0x08), overlay 0, instance 1"); n < 6 {
			t.Errorf("only %d VXLAN datagrams for 3 pings:\n%s", n, decoded[:min(len(decoded), 2000)])
		}
		// VXLAN header: flags 0x08 (VNI valid), reserved, VNI 1, reserved.
		if !bytes.Contains(raw, []byte{0x08, 0, 0, 0, 0, 0, 1, 0}) {
			t.Error("no VXLAN header with VNI 1 on the wire")
		}
	})

	t.Run("VXLAN is accepted from peers only", func(t *testing.T) { checkVXLANFromPeersOnly(t, l, h1, h2) })

	t.Run("status and the log say each peer is in clear", func(t *testing.T) {
		out, err := Exec(h1.Name, weftctlBin, "status")
		if err != nil || strings.Count(out, "vxlan  NO (its lease names the vxlan backend, which does not encrypt)") != 2 {
			t.Errorf("weftctl status does not show both peers in clear over vxlan (%v):\n%s", err, out)
		}
		log, _ := os.ReadFile(h1.LogPath())
		for _, h := range []*Host{h2, h3} {
			if n := strings.Count(string(log), `msg="peer in clear" lease=`+lease.SubnetKey(h.Subnet)); n != 1 {
				t.Errorf("%d log lines say %s is in clear, want 1", n, h.Name)
			}
		}
	})

	t.Run("restart keeps device and neighbours and the TCP stream", func(t *testing.T) {
		before, err := Exec(h1.Name, "ip", "-o", "link", "show", "weft.1")
		if err != nil {
			t.Fatal(err)
		}
		checkStream(t, l, h1, h2, 5003, "a restart of weftd (vxlan)", func() { restartWeftd(t, l, h1) })
		after, _ := Exec(h1.Name, "ip", "-o", "link", "show", "weft.1")
		if index := func(s string) string { return strings.SplitN(s, ":", 2)[0] }; index(before) != index(after) {
			t.Errorf("device was recreated by the restart: %q -> %q", before, after)
		}
		neigh, _ := Exec(h1.Name, "ip", "neigh", "show", "dev", "weft.1")
		for _, h := range []*Host{h2, h3} {
			if !strings.Contains(neigh, h.Subnet.Addr().String()+" lladdr") {
				t.Errorf("neighbour for %s missing after restart:\n%s", h.Name, neigh)
			}
		}
	})

	t.Run("host that leaves disappears from the FDB", func(t *testing.T) {
		l.StopWeftd(h3, syscall.SIGTERM)
		if err := l.Store().Delete(ctx, lease.SubnetKey(h3.Subnet)); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*Host{h1, h2} {
			eventually(t, "h3 gone from "+h.Name+"'s FDB", 10*time.Second, func() error {
				if out, _ := Exec(h.Name, "bridge", "fdb", "show", "dev", "weft.1"); strings.Contains(out, h3.PublicIP.String()) {
					return fmt.Errorf("still there:\n%s", out)
				}
				return nil
			})
		}
		if err := l.Ping(h1, h2); err != nil {
			t.Errorf("h1 -> h2 after h3 left: %v", err)
		}
	})
}

// checkVXLANFromPeersOnly: issue 30, item 5. A VXLAN datagram with the
// right VNI, the target's VTEP MAC and an inner packet for its container
// reaches the container when a peer sends it, and is dropped (counted by
// its source in /metrics) when an address on the underlay that holds no
// lease sends the very same bytes.
func checkVXLANFromPeersOnly(t *testing.T, l *Lab, from, target *Host) {
	rec, ok, err := l.Store().Get(context.Background(), lease.SubnetKey(target.Subnet))
	if err != nil || !ok {
		t.Fatal(err)
	}
	var data struct {
		VNI     uint32
		VtepMAC string
	}
	targetLease, _ := lease.DecodeLease(rec.Key, rec.Value)
	if err := json.Unmarshal(targetLease.Attrs.BackendData, &data); err != nil {
		t.Fatal(err)
	}
	mac, err := net.ParseMAC(data.VtepMAC)
	if err != nil {
		t.Fatal(err)
	}
	rogue, rogueIP, err := l.AddRogue()
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(target.ContainerIP(), 7777)
	inner := func(text string) []byte {
		return VXLANFrame(data.VNI, mac, InnerUDP(netip.AddrPortFrom(from.Subnet.Addr().Next().Next(), 4444), dst, []byte(text)))
	}
	vtep := netip.AddrPortFrom(target.PublicIP, 8472)
	got, err := ReceiveUDP(target.Container, dst, 1500*time.Millisecond, func() {
		for range 3 {
			SendUDP(rogue, vtep, inner("from-rogue"))
			SendUDP(from.Name, vtep, inner("from-peer"))
		}
	})
	text := strings.Join(got, "; ")
	if err != nil || strings.Contains(text, "from-rogue") || !strings.Contains(text, "from-peer") {
		t.Errorf("the container received %q (%v); want the peer's datagrams and none of %s's", text, err, rogueIP)
	}
	checkTunnelDrops(t, target, rogueIP, 3)
	if out, err := Exec(target.Name, weftctlBin, "status"); err != nil || !strings.Contains(out, "tunnel packets dropped from "+rogueIP.String()+" (holds no lease): 3") {
		t.Errorf("weftctl status does not show the drops (%v):\n%s", err, out)
	}
}

// checkTunnelDrops waits until h's /metrics counts n tunnel packets
// dropped from source.
func checkTunnelDrops(t *testing.T, h *Host, source netip.Addr, n int) {
	t.Helper()
	eventually(t, "the drops counted by source", 5*time.Second, func() error {
		metrics, err := HTTPGet(h.Name, "http://127.0.0.1:8471/metrics")
		if want := fmt.Sprintf(`weft_tunnel_dropped_packets_total{source="%s"} %d`, source, n); err != nil || !strings.Contains(metrics, want) {
			return fmt.Errorf("no %s in /metrics (%v)", want, err)
		}
		return nil
	})
}
