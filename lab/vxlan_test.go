package lab

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

func TestVXLANCluster(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: lease.BackendVXLAN})
	ctx := context.Background()
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	t.Run("hostile leases reach no kernel", func(t *testing.T) { checkHostileLeases(t, l, lease.BackendVXLAN) })

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
