package firewall_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/nft/nfttest"
	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/cmd/internal/firewall/firewalltest"
)

// TestMSSClamp: while a WireGuard device carries a larger MTU than
// WireGuard's own (1420), TCP SYNs leaving by weft-wg are clamped to the
// MSS of 1420 (1380 in IPv4, 1360 in IPv6) in mangle POSTROUTING, after
// other users' rules; the chain goes when nothing is carried any more,
// and with cleanup. In nftables mode it is a chain of weft's table.
func TestMSSClamp(t *testing.T) {
	for _, family := range []struct {
		ipv6 bool
		mss  string
	}{{false, "1380"}, {true, "1360"}} {
		ipt := firewalltest.New()
		ipt.Append("mangle", "POSTROUTING", "-o", "eth0", "-j", "ACCEPT")
		k := firewall.NewIPTablesKeeperWith(ipt, firewall.Settings{ClampMTU: 1420, IPv6: family.ipv6}, slog.New(slog.DiscardHandler))
		sync(t, k, subnet)
		want := `*mangle
:PREROUTING ACCEPT
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:WEFT-MSS -
-A POSTROUTING -o eth0 -j ACCEPT
-A POSTROUTING -m comment --comment "weft mss" -j WEFT-MSS
-A WEFT-MSS -o weft-wg+ -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment "weft mss" -j TCPMSS --set-mss ` + family.mss + `
COMMIT
`
		checkGolden(t, ipt, want, "with a carried MTU")
		syncWritesNothing(t, ipt, k)

		off := firewall.NewIPTablesKeeperWith(ipt, firewall.Settings{Forward: true}, slog.New(slog.DiscardHandler))
		sync(t, off, subnet)
		if got := ipt.Save(); strings.Contains(got, "WEFT-MSS") {
			t.Errorf("the MSS clamp stays with no carried MTU:\n%s", got)
		}
		sync(t, k, subnet)
		if err := k.Cleanup(); err != nil {
			t.Fatal(err)
		}
		if got := ipt.Save(); strings.Contains(got, "WEFT-MSS") {
			t.Errorf("the MSS clamp stays after cleanup:\n%s", got)
		}
	}

	nft := nfttest.NewNFT()
	k := firewall.NewNFTablesKeeperWith(nft, nil, firewall.Settings{Masq: true, ClampMTU: 1420}, slog.New(slog.DiscardHandler))
	if err := k.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
	got := nft.List(firewall.NFTTableIPv4, nftables.TableFamilyIPv4)
	want := "\tchain mss {\n\t\ttype filter hook postrouting priority -150; policy accept;\n" +
		"\t\toifname \"weft-wg*\" tcp flags syn / syn,rst tcp option maxseg size > 1380 tcp option maxseg size set 1380\n\t}\n"
	if !strings.Contains(got, want) {
		t.Errorf("nft list table:\n%s\nwant it to hold:\n%s", got, want)
	}
}
