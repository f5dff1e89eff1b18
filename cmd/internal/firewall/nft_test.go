package firewall

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weftnet/weft/cmd/internal/firewall/firewalltest"
)

// TestNFTTableFor: weft's nftables table holds MasqChainFor's rules in
// their order and ForwardChainFor's, in flannel's chains (forward on the
// filter hook, postrtg on nat postrouting), for either family.
func TestNFTTableFor(t *testing.T) {
	n, s, peers := netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.1.0/24"), netip.MustParsePrefix("10.6.0.0/24")
	table := NFTTableFor(false, n, s, peers, true, true, true)
	if table.Name != "weft-ipv4" || table.Family != nftables.TableFamilyIPv4 || len(table.Chains) != 2 {
		t.Fatalf("%+v", table)
	}
	var got []string
	for _, c := range table.Chains {
		got = append(got, "chain "+c.Name)
		for _, r := range c.Rules {
			got = append(got, r.Text)
		}
	}
	want := `chain forward
ip saddr 10.5.0.0/16 accept
ip daddr 10.5.0.0/16 accept
chain postrtg
meta mark & 0x4000 == 0x4000 return
ip saddr 10.5.1.0/24 ip daddr 10.5.0.0/16 return
ip saddr 10.5.0.0/16 ip daddr 10.5.1.0/24 return
ip saddr != 10.5.0.0/16 ip daddr 10.5.1.0/24 return
ip saddr 10.5.0.0/16 ip daddr 10.6.0.0/24 return
ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random`
	if strings.Join(got, "\n") != want {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), want)
	}
	// Every rule has one expression group per part: address matches are
	// payload, bitwise, cmp; the IPv4 saddr is at offset 12.
	if r := table.Chains[0].Rules[0]; len(r.Exprs) != 4 {
		t.Errorf("forward rule has %d expressions", len(r.Exprs))
	}
	v6 := NFTTableFor(true, netip.MustParsePrefix("fc00:5::/48"), netip.MustParsePrefix("fc00:5:0:1::/64"), netip.Prefix{}, true, false, false)
	if v6.Name != "weft-ipv6" || v6.Family != nftables.TableFamilyIPv6 || len(v6.Chains) != 1 || len(v6.Chains[0].Rules) != 6 ||
		v6.Chains[0].Rules[4].Text != "ip6 saddr fc00:5::/48 ip6 daddr != ff00::/8 masquerade" {
		t.Errorf("IPv6 table %+v", v6)
	}
}

// TestDockerUserRules: weft's rule in DOCKER-USER for another network is
// found by its comment and removed; the current one and others' rules stay.
func TestDockerUserRules(t *testing.T) {
	ipt := firewalltest.New()
	if err := ipt.ClearChain("filter", DockerUserChain); err != nil {
		t.Fatal(err)
	}
	ipt.Append("filter", DockerUserChain, "-s", "192.0.2.0/24", "-j", "DROP")
	ipt.Insert("filter", DockerUserChain, 1, DockerUserRule(netip.MustParsePrefix("10.5.0.0/16"))...)
	ipt.Insert("filter", DockerUserChain, 1, DockerUserRule(netip.MustParsePrefix("10.9.0.0/16"))...)
	k := &NFTKeeper{docker: ipt, log: slog.New(slog.DiscardHandler)}
	if err := k.syncDockerUser(netip.MustParsePrefix("10.5.0.0/16")); err != nil {
		t.Fatal(err)
	}
	save := ipt.Save()
	if strings.Contains(save, "10.9.0.0/16") || !strings.Contains(save, "-s 10.5.0.0/16 -d 10.5.0.0/16") || !strings.Contains(save, "192.0.2.0/24") {
		t.Errorf("after removing the 10.9 rule:\n%s", save)
	}
}
