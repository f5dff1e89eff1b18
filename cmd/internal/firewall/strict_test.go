package firewall_test

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/nft/nfttest"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/cmd/internal/firewall/firewalltest"
)

// strictGolden is the mangle table with strict encryption on a host whose
// subnet is 10.5.34.0/24, outside peers at 10.6.0.0/24: the jump first in
// POSTROUTING, before another user's rule that was there.
const strictGolden = `*mangle
:PREROUTING ACCEPT
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:WEFT-STRICT -
-A POSTROUTING -m comment --comment "weft strict encryption" -j WEFT-STRICT
-A POSTROUTING -o eth0 -j ACCEPT
-A WEFT-STRICT -d 10.5.34.0/24 -m comment --comment "weft strict encryption" -j RETURN
-A WEFT-STRICT -d 10.5.0.0/16 ! -o weft-wg+ -m comment --comment "weft strict encryption" -j DROP
-A WEFT-STRICT -d 10.6.0.0/24 ! -o weft-wg+ -m comment --comment "weft strict encryption" -j DROP
COMMIT
`

// TestStrictEncryptionChain: strict encryption alone (no masquerade, no
// forward rules) keeps its chain in mangle, jumped to first from
// POSTROUTING (an ACCEPT already there cannot let a packet past it); a
// rule deleted by hand and a moved subnet are repaired; the chain goes
// when the config drops StrictEncryption, and with cleanup.
func TestStrictEncryptionChain(t *testing.T) {
	ipt := firewalltest.New()
	ipt.Append("mangle", "POSTROUTING", "-o", "eth0", "-j", "ACCEPT")
	strict := firewall.Settings{Strict: true, PeersNetwork: netip.MustParsePrefix("10.6.0.0/24")}
	k := firewall.NewIPTablesKeeperWith(ipt, strict, slog.New(slog.DiscardHandler))
	sync(t, k, subnet)
	checkGolden(t, ipt, strictGolden, "after the first sync")
	syncWritesNothing(t, ipt, k)

	ipt.DeleteById("mangle", firewall.StrictChain, 2) // the Network's drop
	sync(t, k, subnet)
	checkGolden(t, ipt, strictGolden, "after the drop was deleted by hand")

	moved := netip.MustParsePrefix("10.5.77.0/24")
	sync(t, k, moved)
	checkGolden(t, ipt, strings.ReplaceAll(strictGolden, "10.5.34.0/24", "10.5.77.0/24"), "after the subnet moved")

	off := firewall.NewIPTablesKeeperWith(ipt, firewall.Settings{}, slog.New(slog.DiscardHandler))
	sync(t, off, moved)
	want := "*mangle\n:PREROUTING ACCEPT\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\n:POSTROUTING ACCEPT\n-A POSTROUTING -o eth0 -j ACCEPT\nCOMMIT\n"
	checkGolden(t, ipt, want, "after the config dropped StrictEncryption")

	sync(t, k, subnet)
	if err := k.Cleanup(); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, ipt, want, "after cleanup")
}

// TestNFTStrictChain: in nftables mode the same drop is a chain of weft's
// table on the postrouting hook at mangle priority, with a counter, beside
// the masquerade and forward chains; the table is written in one
// transaction, so the drop is never missing.
func TestNFTStrictChain(t *testing.T) {
	nft := nfttest.NewNFT()
	k := firewall.NewNFTablesKeeperWith(nft, nil, firewall.Settings{Masq: true, Strict: true}, slog.New(slog.DiscardHandler))
	if err := k.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
	got := nft.List(firewall.NFTTableIPv4, nftables.TableFamilyIPv4)
	want := "\tchain strict {\n\t\ttype filter hook postrouting priority -150; policy accept;\n" +
		"\t\tip daddr 10.5.0.0/16 ip daddr != 10.5.34.0/24 oifname != \"weft-wg*\" counter drop\n\t}\n"
	if !strings.Contains(got, want) || !strings.Contains(got, "chain postrtg") {
		t.Errorf("nft list table:\n%s\nwant it to hold:\n%s", got, want)
	}
	off := firewall.NewNFTablesKeeperWith(nft, nil, firewall.Settings{Masq: true}, slog.New(slog.DiscardHandler))
	if err := off.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
	if got := nft.List(firewall.NFTTableIPv4, nftables.TableFamilyIPv4); strings.Contains(got, "strict") {
		t.Errorf("the strict chain stays without StrictEncryption:\n%s", got)
	}
}
