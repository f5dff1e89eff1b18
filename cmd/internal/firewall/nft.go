package firewall

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

// The nftables mode ("EnableNFTables": true in the network config) keeps
// the same rules as the iptables chains in weft's own tables, one per
// family, as flannel keeps its flannel-ipv4 and flannel-ipv6: a filter
// chain on the forward hook and a nat chain on postrouting.
const (
	NFTTableIPv4    = "weft-ipv4"
	NFTTableIPv6    = "weft-ipv6"
	nftForwardChain = "forward"
	nftMasqChain    = "postrtg"
)

// NFTRule is one rule: its nft text (also its comment, which is how a
// resync tells a rule changed by hand or left from another subnet) and
// its expressions.
type NFTRule struct {
	Text  string
	Exprs []expr.Any
}

// NFTChain is a base chain of weft's table and its rules in order.
type NFTChain struct {
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority *nftables.ChainPriority
	Rules    []NFTRule
}

// NFTTable is weft's whole table for one family.
type NFTTable struct {
	Family nftables.TableFamily
	Name   string
	Chains []NFTChain
}

// NFTTableName is weft's table for a family.
func NFTTableName(ipv6 bool) (string, nftables.TableFamily) {
	if ipv6 {
		return NFTTableIPv6, nftables.TableFamilyIPv6
	}
	return NFTTableIPv4, nftables.TableFamilyIPv4
}

// NFTTableFor is weft's table for a network: the masquerade chain with
// MasqChainFor's rules in their order (masq), and the forward chain
// accepting traffic to and from the Network (forward), as flannel's
// nftables mode has them. ipv6 picks the family; network, subnet and peers
// are of that family (peers invalid for none).
func NFTTableFor(ipv6 bool, network, subnet, peers netip.Prefix, masq, forward, randomFully bool) NFTTable {
	name, family := NFTTableName(ipv6)
	t := NFTTable{Family: family, Name: name}
	if forward {
		t.Chains = append(t.Chains, NFTChain{Name: nftForwardChain, Type: nftables.ChainTypeFilter,
			Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Rules: []NFTRule{
				nftRule(addrMatch(false, network, false), verdict(expr.VerdictAccept)),
				nftRule(addrMatch(true, network, false), verdict(expr.VerdictAccept)),
			}})
	}
	if masq {
		multicast := netip.MustParsePrefix("224.0.0.0/4")
		if ipv6 {
			multicast = netip.MustParsePrefix("ff00::/8")
		}
		masquerade := nftPart{"masquerade", []expr.Any{&expr.Masq{}}}
		if randomFully {
			masquerade = nftPart{"masquerade fully-random", []expr.Any{&expr.Masq{FullyRandom: true}}}
		}
		ret := verdict(expr.VerdictReturn)
		rules := []NFTRule{
			nftRule(markMatch(kubeProxyMarkBit), ret),
			nftRule(addrMatch(false, subnet, false), addrMatch(true, network, false), ret),
			nftRule(addrMatch(false, network, false), addrMatch(true, subnet, false), ret),
			nftRule(addrMatch(false, network, true), addrMatch(true, subnet, false), ret),
		}
		if peers.IsValid() {
			rules = append(rules, nftRule(addrMatch(false, network, false), addrMatch(true, peers, false), ret))
		}
		rules = append(rules,
			nftRule(addrMatch(false, network, false), addrMatch(true, multicast, true), masquerade),
			nftRule(addrMatch(false, network, true), addrMatch(true, network, false), masquerade))
		t.Chains = append(t.Chains, NFTChain{Name: nftMasqChain, Type: nftables.ChainTypeNAT,
			Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Rules: rules})
	}
	return t
}

// kubeProxyMarkBit is kube-proxy's masquerade mark (kubeProxyMark).
const kubeProxyMarkBit = 0x4000

// nftPart is part of a rule: its text and expressions.
type nftPart struct {
	text  string
	exprs []expr.Any
}

func nftRule(parts ...nftPart) NFTRule {
	var r NFTRule
	for _, p := range parts {
		if r.Text != "" {
			r.Text += " "
		}
		r.Text += p.text
		r.Exprs = append(r.Exprs, p.exprs...)
	}
	return r
}

// addrMatch matches the source (or destination) address against a prefix
// (negated: not in it), as nft's "ip saddr 10.5.0.0/16".
func addrMatch(dst bool, p netip.Prefix, negate bool) nftPart {
	family, offset, size := "ip", uint32(12), uint32(4)
	if p.Addr().Is6() {
		family, offset, size = "ip6", 8, 16
	}
	field := "saddr"
	if dst {
		field, offset = "daddr", offset+size
	}
	op, opText := expr.CmpOpEq, ""
	if negate {
		op, opText = expr.CmpOpNeq, "!= "
	}
	mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
	return nftPart{fmt.Sprintf("%s %s %s%s", family, field, opText, p.Masked()), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: op, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}}
}

// markMatch matches packets with bit set in their mark.
func markMatch(bit uint32) nftPart {
	return nftPart{fmt.Sprintf("meta mark & 0x%x == 0x%x", bit, bit), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bit),
			Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(bit)},
	}}
}

func verdict(kind expr.VerdictKind) nftPart {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictReturn: "return"}[kind]
	return nftPart{text, []expr.Any{&expr.Verdict{Kind: kind}}}
}

// DockerUserChain is docker's chain for the administrator's own rules,
// evaluated before docker's (docker's documentation: "Docker and
// iptables"). An accept in weft's nftables table cannot override docker's
// FORWARD policy DROP in iptables (a packet must pass every base chain of
// the hook, and a drop in any wins), so in nftables mode weft accepts the
// overlay's own traffic there.
const DockerUserChain = "DOCKER-USER"

// DockerUserRules are the rules weft keeps in DOCKER-USER: traffic from
// the Network to the Network that enters or leaves through one of the
// overlay's interfaces (iptables names; "weft+" is every weft device),
// container to container across hosts. Both ends must be in the Network,
// and one of the interfaces the overlay's: DOCKER-USER runs before
// docker's own rules, so traffic between two containers of this host (one
// bridge, or two docker networks) must not match, or docker's --icc=false
// and its isolation of networks would stop applying.
func DockerUserRules(network netip.Prefix, overlay []string) [][]string {
	var out [][]string
	for _, iface := range overlay {
		for _, dir := range []string{"-i", "-o"} {
			match := []string{"-s", network.String(), "-d", network.String(), dir, iface}
			out = append(out, rule(fwdComment, match, "-j", "ACCEPT"))
		}
	}
	return out
}

// OverlayDevices is the iptables name of every device weft creates
// (weft0, weft.<VNI>, weft.ipip, weft-wg, weft-v6.<VNI>, weft-wg-v6).
const OverlayDevices = "weft+"
