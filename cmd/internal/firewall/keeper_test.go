package firewall_test

import (
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/cmd/internal/firewall"
	"github.com/weftnet/weft/cmd/internal/firewall/firewalltest"
)

var (
	network = netip.MustParsePrefix("10.5.0.0/16")
	subnet  = netip.MustParsePrefix("10.5.34.0/24")
	quiet   = slog.New(slog.NewTextHandler(io.Discard, nil))
)

// dockerMasq is docker's own masquerade rule, there before weft starts.
var dockerMasq = []string{"-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE"}

// golden is the whole firewall after weft synced on a docker host:
// flannel's rules in flannel's order (pkg/trafficmngr/iptables), its
// jumps appended after docker's rules (DOCKER-USER keeps filtering), the
// comment quoted as iptables-save quotes it.
const golden = `*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:DOCKER-USER -
:WEFT-FWD -
-A FORWARD -j DOCKER-USER
-A FORWARD -m comment --comment "weft forward" -j WEFT-FWD
-A WEFT-FWD -s 10.5.0.0/16 -m comment --comment "weft forward" -j ACCEPT
-A WEFT-FWD -d 10.5.0.0/16 -m comment --comment "weft forward" -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:WEFT-POSTRTG -
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -m comment --comment "weft masq" -j WEFT-POSTRTG
-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.34.0/24 -d 10.5.0.0/16 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG ! -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft masq" -j MASQUERADE --random-fully
-A WEFT-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "weft masq" -j MASQUERADE --random-fully
COMMIT
`

// both is what weftd keeps by default with -ip-masq.
var both = firewall.Settings{Masq: true, Forward: true}

// dockerHost is iptables as docker leaves it (its masquerade rule and its
// DOCKER-USER chain first in FORWARD), and a Keeper of both chains.
func dockerHost(t *testing.T) (*firewalltest.Tables, *firewall.IPTablesKeeper) {
	t.Helper()
	ipt := firewalltest.New()
	ipt.RandomFully = true
	if err := ipt.Append("nat", "POSTROUTING", dockerMasq...); err != nil {
		t.Fatal(err)
	}
	if err := ipt.ClearChain("filter", "DOCKER-USER"); err != nil {
		t.Fatal(err)
	}
	if err := ipt.Append("filter", "FORWARD", "-j", "DOCKER-USER"); err != nil {
		t.Fatal(err)
	}
	return ipt, firewall.NewIPTablesKeeperWith(ipt, both, quiet)
}

func sync(t *testing.T, k *firewall.IPTablesKeeper, subnet netip.Prefix) {
	t.Helper()
	if err := k.Sync(network, subnet); err != nil {
		t.Fatal(err)
	}
}

func checkGolden(t *testing.T, ipt *firewalltest.Tables, want, when string) {
	t.Helper()
	if got := ipt.Save(); got != want {
		t.Errorf("%s, iptables-save:\n%s\nwant:\n%s", when, got, want)
	}
}

func TestSyncWritesFlannelsRules(t *testing.T) {
	ipt, k := dockerHost(t)
	sync(t, k, subnet)
	checkGolden(t, ipt, golden, "after the first sync")
	syncWritesNothing(t, ipt, k)
}

// syncWritesNothing checks that a sync of rules already right writes
// nothing.
func syncWritesNothing(t *testing.T, ipt *firewalltest.Tables, k *firewall.IPTablesKeeper) {
	t.Helper()
	writes := ipt.Writes()
	sync(t, k, subnet)
	if ipt.Writes() != writes {
		t.Errorf("a sync of rules already right wrote %d times", ipt.Writes()-writes)
	}
}

// TestSyncRepairs removes or changes weft's rules by hand, in each way an
// operator or another tool might, and checks one sync puts back exactly
// the golden state.
func TestSyncRepairs(t *testing.T) {
	masqRules := firewall.MasqChainFor(network, subnet, netip.Prefix{}, true)
	fwd := firewall.ForwardChainFor(network)
	cases := []struct {
		name   string
		break_ func(ipt *firewalltest.Tables) error
	}{
		{"masquerade rule deleted", func(ipt *firewalltest.Tables) error {
			return ipt.Delete("nat", firewall.MasqChain, masqRules.Rules[2]...)
		}},
		{"jump from POSTROUTING deleted", func(ipt *firewalltest.Tables) error {
			return ipt.Delete("nat", "POSTROUTING", masqRules.Jump...)
		}},
		{"forward chain flushed", func(ipt *firewalltest.Tables) error {
			return ipt.ClearChain("filter", firewall.ForwardChain)
		}},
		{"a stranger's rule added to weft's chain", func(ipt *firewalltest.Tables) error {
			return ipt.Append("filter", firewall.ForwardChain, "-j", "DROP")
		}},
		{"both chains removed", func(ipt *firewalltest.Tables) error {
			if err := ipt.Delete("nat", "POSTROUTING", masqRules.Jump...); err != nil {
				return err
			}
			if err := ipt.Delete("filter", "FORWARD", fwd.Jump...); err != nil {
				return err
			}
			if err := ipt.ClearAndDeleteChain("nat", firewall.MasqChain); err != nil {
				return err
			}
			return ipt.ClearAndDeleteChain("filter", firewall.ForwardChain)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ipt, k := dockerHost(t)
			sync(t, k, subnet)
			if err := c.break_(ipt); err != nil {
				t.Fatal(err)
			}
			if ipt.Save() == golden {
				t.Fatal("breaking the rules changed nothing")
			}
			sync(t, k, subnet)
			checkGolden(t, ipt, golden, "after the repair")
		})
	}
}

// TestSyncFollowsANewSubnet: after a re-claim the RETURN rule for traffic
// to this host's subnet names the new subnet, and only it.
func TestSyncFollowsANewSubnet(t *testing.T) {
	ipt, k := dockerHost(t)
	sync(t, k, subnet)
	sync(t, k, netip.MustParsePrefix("10.5.77.0/24"))
	want := firewalltest.New()
	want.RandomFully = true
	want.Append("nat", "POSTROUTING", dockerMasq...)
	want.ClearChain("filter", "DOCKER-USER")
	want.Append("filter", "FORWARD", "-j", "DOCKER-USER")
	sync(t, firewall.NewIPTablesKeeperWith(want, both, quiet), netip.MustParsePrefix("10.5.77.0/24"))
	checkGolden(t, ipt, want.Save(), "after the subnet changed")
}

// TestOnlyTheChainsAskedFor: -ip-masq alone keeps no forward chain, and
// MASQUERADE goes without --random-fully when iptables lacks it or
// -ip-masq-fully-random-disable says so.
func TestOnlyTheChainsAskedFor(t *testing.T) {
	want := `*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
:WEFT-POSTRTG -
-A POSTROUTING -m comment --comment "weft masq" -j WEFT-POSTRTG
-A WEFT-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.34.0/24 -d 10.5.0.0/16 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG ! -s 10.5.0.0/16 -d 10.5.34.0/24 -m comment --comment "weft masq" -j RETURN
-A WEFT-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft masq" -j MASQUERADE
-A WEFT-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "weft masq" -j MASQUERADE
COMMIT
`
	noRandom := firewalltest.New()
	sync(t, firewall.NewIPTablesKeeperWith(noRandom, firewall.Settings{Masq: true}, quiet), subnet)
	checkGolden(t, noRandom, want, "-ip-masq only, iptables without --random-fully")
	disabled := firewalltest.New()
	disabled.RandomFully = true
	sync(t, firewall.NewIPTablesKeeperWith(disabled, firewall.Settings{Masq: true, RandomFullyDisable: true}, quiet), subnet)
	checkGolden(t, disabled, want, "-ip-masq-fully-random-disable")
}

// TestCleanupLeavesOthersRules: cleanup removes weft's jumps and chains and
// nothing of docker's; a second cleanup is a no-op.
func TestCleanupLeavesOthersRules(t *testing.T) {
	ipt, k := dockerHost(t)
	sync(t, k, subnet)
	for i := 0; i < 2; i++ {
		if err := k.Cleanup(); err != nil {
			t.Fatal(err)
		}
		checkGolden(t, ipt, `*filter
:INPUT ACCEPT
:FORWARD ACCEPT
:OUTPUT ACCEPT
:DOCKER-USER -
-A FORWARD -j DOCKER-USER
COMMIT
*nat
:PREROUTING ACCEPT
:INPUT ACCEPT
:OUTPUT ACCEPT
:POSTROUTING ACCEPT
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
`, "after cleanup")
	}
}

// TestRemoveFlannel removes flanneld's chains and jumps as flanneld leaves
// them, and nothing else.
func TestRemoveFlannel(t *testing.T) {
	ipt, k := dockerHost(t)
	sync(t, k, subnet)
	ipt.ClearChain("nat", "FLANNEL-POSTRTG")
	ipt.Append("nat", "FLANNEL-POSTRTG", "-s", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE")
	ipt.Append("nat", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG")
	ipt.ClearChain("filter", "FLANNEL-FWD")
	ipt.Append("filter", "FLANNEL-FWD", "-s", "10.244.0.0/16", "-m", "comment", "--comment", "flanneld forward", "-j", "ACCEPT")
	ipt.Append("filter", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", "FLANNEL-FWD")
	removed, err := firewall.RemoveFlannelChains(ipt)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 4 {
		t.Errorf("removed %v, want 2 jumps and 2 chains", removed)
	}
	checkGolden(t, ipt, golden, "after removing flannel's chains")
	if again, err := firewall.RemoveFlannelChains(ipt); err != nil || len(again) != 0 {
		t.Errorf("a second run removed %v (%v)", again, err)
	}
}

// TestMasqChainIPv6: the ip6tables chain of a dual-stack network is the
// IPv4 one with IPv6 prefixes and ff00::/8 for multicast, as flannel's
// masqIP6Rules.
func TestMasqChainIPv6(t *testing.T) {
	c := firewall.MasqChainFor(netip.MustParsePrefix("fc00:5::/48"), netip.MustParsePrefix("fc00:5:0:22::/64"), netip.Prefix{}, false)
	var got []string
	for _, r := range c.Rules {
		got = append(got, strings.Join(r, " "))
	}
	want := []string{
		"-m mark --mark 0x4000/0x4000 -m comment --comment weft masq -j RETURN",
		"-s fc00:5:0:22::/64 -d fc00:5::/48 -m comment --comment weft masq -j RETURN",
		"-s fc00:5::/48 -d fc00:5:0:22::/64 -m comment --comment weft masq -j RETURN",
		"! -s fc00:5::/48 -d fc00:5:0:22::/64 -m comment --comment weft masq -j RETURN",
		"-s fc00:5::/48 ! -d ff00::/8 -m comment --comment weft masq -j MASQUERADE",
		"! -s fc00:5::/48 -d fc00:5::/48 -m comment --comment weft masq -j MASQUERADE",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("IPv6 masquerade chain:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMasqChainOutsidePeers: traffic from the Network to the outside
// peers' network returns before the masquerade rules (they route back
// through WireGuard); without one the chain is flannel's.
func TestMasqChainOutsidePeers(t *testing.T) {
	with := firewall.MasqChainFor(network, subnet, netip.MustParsePrefix("10.6.0.0/24"), false)
	without := firewall.MasqChainFor(network, subnet, netip.Prefix{}, false)
	if len(with.Rules) != len(without.Rules)+1 {
		t.Fatalf("%d rules with outside peers, %d without", len(with.Rules), len(without.Rules))
	}
	if got := strings.Join(with.Rules[4], " "); got != "-s 10.5.0.0/16 -d 10.6.0.0/24 -m comment --comment weft masq -j RETURN" {
		t.Errorf("rule before the masquerade: %s", got)
	}
	if got := strings.Join(with.Rules[5], " "); !strings.Contains(got, "MASQUERADE") {
		t.Errorf("the return does not come first: %s", got)
	}
}
