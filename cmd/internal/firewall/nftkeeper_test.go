package firewall_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/backends/nft/nfttest"
	"github.com/weftnet/weft/cmd/internal/firewall"
)

// TestNFTablesKeeperOnFake: the nftables keeper on the fake nftables, as
// `nft list table ip weft-ipv4` would show it: the first sync writes the
// table in one transaction; a sync with nothing changed sends none; a rule
// deleted by hand, or a new subnet, rewrites the table whole; a failed
// transaction leaves the previous table in place and is reported.
func TestNFTablesKeeperOnFake(t *testing.T) {
	nft := nfttest.NewNFT()
	k := firewall.NewNFTablesKeeperWith(nft, nil, firewall.Settings{Masq: true, Forward: true}, slog.New(slog.DiscardHandler))
	network, subnet := netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.1.0/24")
	list := func() string { return nft.List(firewall.NFTTableIPv4, nftables.TableFamilyIPv4) }
	if err := k.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
	want := tableText(network, subnet)
	for _, line := range []string{"\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n",
		"\tchain postrtg {\n\t\ttype nat hook postrouting priority 100; policy accept;\n"} {
		if !strings.Contains(want, line) {
			t.Fatalf("flannel's chain %q is not in the table:\n%s", line, want)
		}
	}
	if got := list(); got != want {
		t.Fatalf("nft list table:\n%s\nwant:\n%s", got, want)
	}
	flushes := nft.Flushes()
	if err := k.Sync(network, subnet); err != nil || nft.Flushes() != flushes {
		t.Fatalf("a sync with nothing to change sent %d transactions (%v)", nft.Flushes()-flushes, err)
	}

	masq := firewall.NFTTableFor(false, network, subnet, netip.Prefix{}, true, true, true).Chains[1].Rules[0].Text
	if !nft.DeleteRule(masq) {
		t.Fatalf("no rule %q to delete", masq)
	}
	if err := k.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
	if got := list(); got != want {
		t.Fatalf("after a rule was deleted by hand:\n%s\nwant:\n%s", got, want)
	}

	moved := netip.MustParsePrefix("10.5.9.0/24")
	nft.FlushErr = nfttest.ErrInjected
	if err := k.Sync(network, moved); !errors.Is(err, nfttest.ErrInjected) {
		t.Fatalf("a failed transaction returned %v", err)
	}
	if got := list(); got != want {
		t.Fatalf("a failed transaction changed the table:\n%s", got)
	}
	nft.FlushErr = nil
	if err := k.Sync(network, moved); err != nil {
		t.Fatal(err)
	}
	if got := list(); got != tableText(network, moved) {
		t.Fatalf("after the subnet moved:\n%s\nwant:\n%s", got, tableText(network, moved))
	}
}

// tableText is weft's IPv4 table as `nft list table` prints it (rules as
// their text), built from NFTTableFor's chains so the test checks the
// keeper, not the rule plan (TestNFTTableFor does).
func tableText(network, subnet netip.Prefix) string {
	table := firewall.NFTTableFor(false, network, subnet, netip.Prefix{}, true, true, true)
	var b strings.Builder
	b.WriteString("table ip weft-ipv4 {\n")
	hooks := map[nftables.ChainHook]string{2: "forward", 4: "postrouting"}
	for i, c := range table.Chains {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString("\tchain " + c.Name + " {\n")
		b.WriteString("\t\ttype " + string(c.Type) + " hook " + hooks[*c.Hook] + " priority " + prio(c.Priority) + "; policy accept;\n")
		for _, r := range c.Rules {
			b.WriteString("\t\t" + r.Text + "\n")
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func prio(p *nftables.ChainPriority) string { return fmt.Sprint(int32(*p)) }
