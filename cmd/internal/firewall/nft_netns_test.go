//go:build netns

package firewall_test

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/cmd/internal/firewall"
)

// TestNFTablesKeeperInNetns: the kernel takes weft's whole table (the
// expressions are built by hand, not by nft) and nft reads every rule
// back as the keeper's text says: masquerade, forward, strict
// encryption's counted drop and the MSS clamp, in both families.
func TestNFTablesKeeperInNetns(t *testing.T) {
	host := netkerneltest.NewNetns(t)
	host.Enter(t)
	for _, f := range []struct {
		ipv6               bool
		network, subnet    string
		table, strict, mss string
	}{
		{false, "10.5.0.0/16", "10.5.34.0/24", "ip " + firewall.NFTTableIPv4,
			`ip daddr 10.5.0.0/16 ip daddr != 10.5.34.0/24 oifname != "weft-wg*" counter packets 0 bytes 0 drop`,
			`oifname "weft-wg*" tcp flags syn / syn,rst tcp option maxseg size > 1380 tcp option maxseg size set 1380`},
		{true, "fc00:5::/48", "fc00:5:0:22::/64", "ip6 " + firewall.NFTTableIPv6,
			`ip6 daddr fc00:5::/48 ip6 daddr != fc00:5:0:22::/64 oifname != "weft-wg*" counter packets 0 bytes 0 drop`,
			`oifname "weft-wg*" tcp flags syn / syn,rst tcp option maxseg size > 1360 tcp option maxseg size set 1360`},
	} {
		k, err := firewall.NewNFTablesKeeper(firewall.Settings{Masq: true, Forward: true, Strict: true, ClampMTU: 1420, IPv6: f.ipv6},
			slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Sync(netip.MustParsePrefix(f.network), netip.MustParsePrefix(f.subnet)); err != nil {
			t.Fatal(err)
		}
		list := host.Run(t, "nft", "list", "table", strings.Fields(f.table)[0], strings.Fields(f.table)[1])
		for _, want := range []string{f.strict, f.mss, "masquerade", "accept"} {
			if !strings.Contains(list, want) {
				t.Errorf("no %q in\n%s", want, list)
			}
		}
		// A second sync finds the table right and writes nothing.
		if err := k.Sync(netip.MustParsePrefix(f.network), netip.MustParsePrefix(f.subnet)); err != nil {
			t.Fatal(err)
		}
	}
	// A run whose settings ask for no rule at all keeps no table: what a
	// previous run left (strict encryption's drop included) goes.
	var g errgroup.Group
	if kept, err := firewall.Keep(context.Background(), &g, true, firewall.Settings{}, nil, slog.New(slog.DiscardHandler)); kept || err != nil {
		t.Fatalf("Keep with no rule asked for: kept %v, %v", kept, err)
	}
	if list := host.Run(t, "nft", "list", "tables"); strings.Contains(list, "weft") {
		t.Errorf("weft's tables stay with no rule asked for:\n%s", list)
	}
}
