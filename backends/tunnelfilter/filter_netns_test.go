//go:build netns

package tunnelfilter

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
)

// TestFilterInNetns: the table on a real kernel. VXLAN from an address
// outside the peer sets is dropped and counted by its source; from a peer
// it passes; peers are added and removed element by element; Ensure keeps
// the elements when it rewrites the table; Remove deletes it.
func TestFilterInNetns(t *testing.T) {
	host, other := netkerneltest.NewLinkedNetns(t)
	host.Enter(t)
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	f := New(conn, Tunnel{VXLANPort: 8472, IPIP: true})
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	list := host.Run(t, "nft", "list", "table", "inet", TableName)
	for _, want := range []string{
		"udp dport 8472 ip saddr != @peers4 update @dropped4 { ip saddr counter }",
		"udp dport 8472 ip saddr != @peers4 counter packets 0 bytes 0 drop",
		"udp dport 8472 ip6 saddr != @peers6 counter packets 0 bytes 0 drop",
		"meta l4proto ipencap ip saddr != @peers4 counter packets 0 bytes 0 drop",
	} {
		if !strings.Contains(list, want) {
			t.Errorf("no %q in\n%s", want, list)
		}
	}
	send := func() {
		t.Helper()
		other.Run(t, "bash", "-c", "echo vxlan > /dev/udp/192.168.77.1/8472")
	}
	peer := netip.MustParseAddr("192.168.77.2")
	if err := f.Sync([]netip.Addr{netip.MustParseAddr("192.168.77.9"), netip.MustParseAddr("2001:db8::9")}); err != nil {
		t.Fatal(err)
	}
	send()
	drops, err := f.Drops()
	if err != nil || drops[peer] != 1 {
		t.Errorf("drops from a source holding no lease: %v %v", drops, err)
	}
	if err := f.Update([]netip.Addr{peer}, []netip.Addr{netip.MustParseAddr("192.168.77.9")}); err != nil {
		t.Fatal(err)
	}
	send()
	if drops, _ := f.Drops(); drops[peer] != 1 {
		t.Errorf("a peer's VXLAN was dropped: %v", drops)
	}
	if peers, _ := f.Peers(); len(peers) != 2 || peers[0] != peer || peers[1] != netip.MustParseAddr("2001:db8::9") {
		t.Errorf("peers %v", peers)
	}
	// Another port rewrites the table and keeps the peers.
	f = New(conn, Tunnel{VXLANPort: 4789})
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	if peers, _ := f.Peers(); len(peers) != 2 {
		t.Errorf("peers after a rewrite: %v", peers)
	}
	if list := host.Run(t, "nft", "list", "table", "inet", TableName); strings.Contains(list, "8472") || !strings.Contains(list, "udp dport 4789") {
		t.Errorf("after the port change:\n%s", list)
	}
	if removed, err := Remove(conn); !removed || err != nil {
		t.Errorf("Remove = %v %v", removed, err)
	}
	if _, err := host.Try("nft", "list", "table", "inet", TableName); err == nil {
		t.Error("the table outlived Remove")
	}
}

// TestFilterAtScaleInNetns: 50,000 peers go in with one Sync (one netlink
// message held only 1,808 of them, without an error; one transaction of
// them all was refused, EMSGSIZE) and most go out, on a real kernel; a
// rewrite of the table keeps the rest.
func TestFilterAtScaleInNetns(t *testing.T) {
	host := netkerneltest.NewNetns(t)
	host.Enter(t)
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	f := New(conn, Tunnel{VXLANPort: 8472})
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for i := range 50000 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{172, 16, byte(i >> 8), byte(i)}))
	}
	if err := f.Sync(addrs); err != nil {
		t.Fatal(err)
	}
	if peers, err := f.Peers(); err != nil || len(peers) != 50000 {
		t.Fatalf("%d peers after a Sync of 50,000 (%v)", len(peers), err)
	}
	if err := f.Sync(addrs[:20000]); err != nil {
		t.Fatal(err)
	}
	if peers, err := f.Peers(); err != nil || len(peers) != 20000 {
		t.Fatalf("%d peers after a Sync down to 20,000 (%v)", len(peers), err)
	}
	// A rewrite of the table (another port) keeps all 20,000: more than
	// one transaction holds.
	if err := New(conn, Tunnel{VXLANPort: 4789}).Ensure(); err != nil {
		t.Fatal(err)
	}
	if peers, err := f.Peers(); err != nil || len(peers) != 20000 {
		t.Fatalf("%d peers after a rewrite (%v)", len(peers), err)
	}
}
