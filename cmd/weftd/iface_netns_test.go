//go:build netns

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
)

// TestDefaultRouteLinkInNetns finds the default route with the lowest
// metric among many routes, as weftd reads them one at a time.
func TestDefaultRouteLinkInNetns(t *testing.T) {
	ns := netkerneltest.NewNetns(t)
	for i, name := range []string{"up0", "up1"} {
		ns.Run(t, "ip", "link", "add", name, "type", "veth", "peer", "name", name+"p")
		ns.Run(t, "ip", "link", "set", name, "up")
		ns.Run(t, "ip", "link", "set", name+"p", "up")
		ns.Run(t, "ip", "addr", "add", fmt.Sprintf("192.168.%d.1/24", 80+i), "dev", name)
	}
	// Many peer routes, as weft puts there, and two default routes: up1's
	// has the lower metric.
	var batch strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&batch, "route add 10.%d.%d.0/24 via 192.168.80.%d\n", 1+i/256, i%256, 2+i%200)
	}
	batch.WriteString("route add default via 192.168.80.254 metric 200\nroute add default via 192.168.81.254 metric 100\n")
	file := filepath.Join(t.TempDir(), "routes")
	if err := os.WriteFile(file, []byte(batch.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ns.Run(t, "ip", "-batch", file)
	up1, err := ns.Handle.LinkByName("up1")
	if err != nil {
		t.Fatal(err)
	}
	ns.Enter(t)
	if got, err := defaultRouteLink(netlink.FAMILY_V4); err != nil || got != up1.Attrs().Index {
		t.Errorf("IPv4 default route's link = %d, %v; want up1 (%d)", got, err, up1.Attrs().Index)
	}
	if got, err := defaultRouteLink(netlink.FAMILY_V6); err != nil || got != 0 {
		t.Errorf("IPv6 default route's link = %d, %v; want 0 (none)", got, err)
	}
	if _, link, err := hostInterfaces(); err != nil || link != up1.Attrs().Index {
		t.Errorf("hostInterfaces: default link %d, %v; want %d", link, err, up1.Attrs().Index)
	}
}
