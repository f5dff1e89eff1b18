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
}

// MasqChainFor has flannel's masquerade semantics: nothing is masqueraded
// inside the Network; traffic from the outside to this host's subnet keeps
// its source; containers leaving the Network (but not to multicast) and the
// host talking to remote containers are masqueraded.
func MasqChainFor(network, subnet netip.Prefix, randomFully bool) Chain {
	n, s := network.String(), subnet.String()
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	c := func(spec ...string) []string { return append(spec, "-m", "comment", "--comment", masqComment) }
	return Chain{
		Table: "nat", Name: MasqChain, From: "POSTROUTING",
		Jump: c("-j", MasqChain),
		Rules: [][]string{
			append(c("-s", n, "-d", n), "-j", "RETURN"),
			append(c("!", "-s", n, "-d", s), "-j", "RETURN"),
			append(c("-s", n, "!", "-d", "224.0.0.0/4"), masq...),
			append(c("!", "-s", n, "-d", n), masq...),
		},
	}
}

// ForwardChainFor accepts forwarded traffic to and from the Network, for
// hosts whose FORWARD policy is DROP (docker sets it so).
func ForwardChainFor(network netip.Prefix) Chain {
	n := network.String()
	c := func(spec ...string) []string { return append(spec, "-m", "comment", "--comment", fwdComment) }
	return Chain{
		Table: "filter", Name: ForwardChain, From: "FORWARD",
		Jump: c("-j", ForwardChain),
		Rules: [][]string{
			append(c("-s", n), "-j", "ACCEPT"),
			append(c("-d", n), "-j", "ACCEPT"),
		},
	}
}
