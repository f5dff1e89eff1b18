package tunnelfilter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/nft/nfttest"
)

// TestFilterOnFake: the filter's table on the in-memory nftables, as `nft
// list table inet weft-tunnel` prints it: the peer sets hold exactly the
// addresses given (Sync, Update), an element removed by hand comes back at
// the next Sync, a table rewritten for another port keeps its peers, and
// Remove takes the table away. (TestFilterInNetns runs the same rules in
// the kernel and sends packets at them.)
func TestFilterOnFake(t *testing.T) {
	conn := nfttest.NewNFT()
	f := New(conn, Tunnel{VXLANPort: 8472, IPIP: true})
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr
	if err := f.Sync([]netip.Addr{addr("192.168.77.3"), addr("192.168.77.2"), addr("fd77::2"), addr("::ffff:192.168.77.4")}); err != nil {
		t.Fatal(err)
	}
	want := `table inet weft-tunnel {
	set peers4 {
		type ipv4_addr
		elements = { 192.168.77.2, 192.168.77.3, 192.168.77.4 }
	}

	set peers6 {
		type ipv6_addr
		elements = { fd77::2 }
	}

	set dropped4 {
		type ipv4_addr
		size 4096
		flags dynamic,timeout
		timeout 10m
	}

	set dropped6 {
		type ipv6_addr
		size 4096
		flags dynamic,timeout
		timeout 10m
	}

	chain input {
		type filter hook input priority 0; policy accept;
		udp dport 8472 ip saddr != @peers4 update @dropped4 { ip saddr counter }
		udp dport 8472 ip saddr != @peers4 counter drop
		udp dport 8472 ip6 saddr != @peers6 update @dropped6 { ip6 saddr counter }
		udp dport 8472 ip6 saddr != @peers6 counter drop
		meta l4proto ipencap ip saddr != @peers4 update @dropped4 { ip saddr counter }
		meta l4proto ipencap ip saddr != @peers4 counter drop
	}
}
`
	list := func() string { return conn.List(TableName, nftables.TableFamilyINet) }
	if got := list(); got != want {
		t.Fatalf("after Ensure and Sync:\n%s\nwant:\n%s", got, want)
	}
	flushes := conn.Flushes()
	if err := f.Ensure(); err != nil || conn.Flushes() != flushes {
		t.Errorf("Ensure of a table as wanted: %v, %d transactions; want none", err, conn.Flushes()-flushes)
	}

	if err := f.Update([]netip.Addr{addr("192.168.77.5")}, []netip.Addr{addr("192.168.77.3")}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list(), "elements = { 192.168.77.2, 192.168.77.4, 192.168.77.5 }") {
		t.Errorf("after Update +.5 -.3:\n%s", list())
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	if !conn.DeleteElement(table, peers4, addr("192.168.77.2")) {
		t.Fatal("the fake holds no 192.168.77.2")
	}
	if err := f.Sync([]netip.Addr{addr("192.168.77.2"), addr("192.168.77.4"), addr("192.168.77.5"), addr("fd77::2")}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(list(), "elements = { 192.168.77.2, 192.168.77.4, 192.168.77.5 }") {
		t.Errorf("an element removed by hand is not back after Sync:\n%s", list())
	}

	// Another port: the table is rewritten, its peers kept.
	if err := New(conn, Tunnel{VXLANPort: 4789}).Ensure(); err != nil {
		t.Fatal(err)
	}
	got := list()
	if !strings.Contains(got, "udp dport 4789 ip saddr != @peers4 counter drop") || strings.Contains(got, "8472") ||
		strings.Contains(got, "ipencap") || !strings.Contains(got, "elements = { 192.168.77.2, 192.168.77.4, 192.168.77.5 }") ||
		!strings.Contains(got, "elements = { fd77::2 }") {
		t.Errorf("rewritten for port 4789:\n%s\nwant its rules for 4789 alone and the peers kept", got)
	}
	if removed, err := Remove(conn); !removed || err != nil {
		t.Errorf("Remove: %v, %v", removed, err)
	}
	if got := list(); !strings.HasPrefix(got, "Error: No such file or directory") {
		t.Errorf("after Remove:\n%s", got)
	}
	if removed, err := Remove(conn); removed || err != nil {
		t.Errorf("Remove of no table: %v, %v; want false and no error", removed, err)
	}
}
