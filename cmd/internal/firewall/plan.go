// Package firewall keeps weft's host firewall rules: masquerade for traffic
// leaving the Network (-ip-masq) and forward acceptance for the Network
// (-iptables-forward-rules), each in weft's own chain with one jump from the
// built-in chain. plan.go is pure; keeper.go applies the plan through the
// Tables seam, which go-iptables implements and firewalltest fakes. weftd
// keeps the rules, weftctl cleanup removes them.
package firewall

import "net/netip"

// Chain names and the comment every weft rule carries.
const (
	MasqChain    = "WEFT-POSTRTG"
	ForwardChain = "WEFT-FWD"
	masqComment  = "weft masq"
	fwdComment   = "weft forward"
)

// Chain is weft's chain in a table, its rules in order, and the jump to it
// from a built-in chain.
type Chain struct {
	Table, Name, From string
	Jump              []string
	Rules             [][]string
	// First puts the jump at the top of From (strict encryption's drop,
	// which nothing may accept before); other jumps are appended.
	First bool
}

// kubeProxyMark is the mark kube-proxy sets on packets it has already
// masqueraded (flannel's trafficmngr.KubeProxyMark); they are left alone.
const kubeProxyMark = "0x4000/0x4000"

// rule puts weft's comment between a rule's matches and its target, as
// flannel writes its own rules.
func rule(comment string, match []string, target ...string) []string {
	return append(append(match, "-m", "comment", "--comment", comment), target...)
}

// MasqChainFor is flannel's masquerade chain, rule for rule and in its
// order (flannel pkg/trafficmngr/iptables masqRules): packets kube-proxy
// marked are left alone; nothing is masqueraded between this host's subnet
// and the Network; traffic from outside to this host's subnet keeps its
// source; containers leaving the Network (but not to multicast) and the
// host talking to remote containers are masqueraded, with --random-fully
// when iptables has it unless randomFullyDisable (-ip-masq-fully-random-disable).
//
// For IPv6 (ip6tables, network an IPv6 prefix) the rules are the same with
// ff00::/8 for multicast, as flannel's masqIP6Rules.
//
// Traffic from the Network to the outside peers' network (peers, weft's
// PeersNetwork; invalid for none) is not masqueraded: they route back to
// the containers through WireGuard.
func MasqChainFor(network, subnet, peers netip.Prefix, randomFully bool) Chain {
	n, s := network.String(), subnet.String()
	multicast := "224.0.0.0/4"
	if network.Addr().Is6() {
		multicast = "ff00::/8"
	}
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	r := func(match []string, target ...string) []string { return rule(masqComment, match, target...) }
	rules := [][]string{
		r([]string{"-m", "mark", "--mark", kubeProxyMark}, "-j", "RETURN"),
		r([]string{"-s", s, "-d", n}, "-j", "RETURN"),
		r([]string{"-s", n, "-d", s}, "-j", "RETURN"),
		r([]string{"!", "-s", n, "-d", s}, "-j", "RETURN"),
	}
	if peers.IsValid() {
		rules = append(rules, r([]string{"-s", n, "-d", peers.String()}, "-j", "RETURN"))
	}
	rules = append(rules,
		r([]string{"-s", n, "!", "-d", multicast}, masq...),
		r([]string{"!", "-s", n, "-d", n}, masq...))
	return Chain{Table: "nat", Name: MasqChain, From: "POSTROUTING", Jump: r(nil, "-j", MasqChain), Rules: rules}
}

// ForwardChainFor accepts forwarded traffic to and from the Network, for
// hosts whose FORWARD policy is DROP (docker sets it so), as flannel's
// FLANNEL-FWD does.
func ForwardChainFor(network netip.Prefix) Chain {
	n := network.String()
	r := func(match []string, target ...string) []string { return rule(fwdComment, match, target...) }
	return Chain{
		Table: "filter", Name: ForwardChain, From: "FORWARD",
		Jump: r(nil, "-j", ForwardChain),
		Rules: [][]string{
			r([]string{"-s", n}, "-j", "ACCEPT"),
			r([]string{"-d", n}, "-j", "ACCEPT"),
		},
	}
}
