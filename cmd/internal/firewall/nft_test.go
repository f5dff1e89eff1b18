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

// TestDockerUserRules: weft's rules in DOCKER-USER accept the Network's
// traffic only through the overlay's interfaces (issue 30, item 6: a rule
// on addresses alone accepted container to container on one bridge,
// defeating docker's --icc=false); they sit before docker's RETURN, and
// weft's rules for another network, or in the older form without an
// interface, are found by their comment and removed; others' rules stay.
func TestDockerUserRules(t *testing.T) {
	ipt := firewalltest.New()
	if err := ipt.ClearChain("filter", DockerUserChain); err != nil {
		t.Fatal(err)
	}
	ipt.Append("filter", DockerUserChain, "-s", "192.0.2.0/24", "-j", "DROP")
	ipt.Append("filter", DockerUserChain, "-s", "10.5.0.0/16", "-d", "10.5.0.0/16", "-m", "comment", "--comment", fwdComment, "-j", "ACCEPT")
	ipt.Append("filter", DockerUserChain, DockerUserRules(netip.MustParsePrefix("10.9.0.0/16"), []string{OverlayDevices})[0]...)
	ipt.Append("filter", DockerUserChain, "-j", "RETURN")
	k := NewNFTablesKeeperWith(nil, ipt, Settings{Overlay: []string{"eth0"}}, slog.New(slog.DiscardHandler))
	for range 2 { // the second pass changes nothing
		if err := k.syncDockerUser(netip.MustParsePrefix("10.5.0.0/16")); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := ipt.List("filter", DockerUserChain)
	want := `-N DOCKER-USER
-A DOCKER-USER -s 192.0.2.0/24 -j DROP
-A DOCKER-USER -s 10.5.0.0/16 -d 10.5.0.0/16 -i weft+ -m comment --comment "weft forward" -j ACCEPT
-A DOCKER-USER -s 10.5.0.0/16 -d 10.5.0.0/16 -o weft+ -m comment --comment "weft forward" -j ACCEPT
-A DOCKER-USER -s 10.5.0.0/16 -d 10.5.0.0/16 -i eth0 -m comment --comment "weft forward" -j ACCEPT
-A DOCKER-USER -s 10.5.0.0/16 -d 10.5.0.0/16 -o eth0 -m comment --comment "weft forward" -j ACCEPT
-A DOCKER-USER -j RETURN`
	if text := strings.Join(got, "\n"); text != want {
		t.Errorf("DOCKER-USER:\n%s\nwant\n%s", text, want)
	}
	if n, err := removeDockerUserRules(ipt); n != 4 || err != nil {
		t.Errorf("cleanup removed %d (%v)", n, err)
	}
}
