package firewall

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/weftnet/weft/backends/nft"
)

// Strict encryption ("StrictEncryption": true): no packet to another
// host's subnet (or to an outside peer) leaves this host except through
// WireGuard, whatever the routes say. The rule sits after routing, where
// the way out is known and DNAT has happened (mangle POSTROUTING in
// iptables, a filter chain on the postrouting hook at mangle priority in
// nftables), so it covers forwarded packets (containers) and the host's
// own alike, before docker's or anyone's ACCEPT in the filter table can
// let one through. It is a drop with a counter, kept by the resync like
// weft's other rules, and stays when weftd stops (a SIGKILL included):
// only a config without StrictEncryption, or `weftctl cleanup`, takes it
// away.
const (
	StrictChain   = "WEFT-STRICT"
	strictComment = "weft strict encryption"
	// EncryptedDevices are weft's WireGuard devices, as iptables' -o
	// matches them (weft-wg, weft-wg-v6).
	EncryptedDevices = "weft-wg+"
	nftStrictChain   = "strict"
)

// StrictChainFor is the iptables chain of strict encryption for a family:
// this host's own subnet returns (its bridge), and any other destination
// in the Network, or in the outside peers' network (peers; invalid for
// none), that leaves by an interface other than weft's WireGuard devices
// is dropped.
func StrictChainFor(network, subnet, peers netip.Prefix) Chain {
	r := func(match []string, target ...string) []string { return rule(strictComment, match, target...) }
	rules := [][]string{r([]string{"-d", subnet.String()}, "-j", "RETURN")}
	for _, dst := range []netip.Prefix{network, peers} {
		if dst.IsValid() {
			rules = append(rules, r([]string{"-d", dst.String(), "!", "-o", EncryptedDevices}, "-j", "DROP"))
		}
	}
	return Chain{Table: "mangle", Name: StrictChain, From: "POSTROUTING", First: true, Jump: r(nil, "-j", StrictChain),
		Rules: rules}
}

// NFTStrictChainFor is StrictChainFor for weft's nftables table: one chain
// on the postrouting hook at mangle priority, with a counter on each drop.
func NFTStrictChainFor(network, subnet, peers netip.Prefix) NFTChain {
	notWireGuard := nftPart{`oifname != "weft-wg*"`, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		// nft compiles a trailing * to a compare of the prefix alone.
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte("weft-wg")},
	}}
	drop := nftPart{"counter drop", []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}}
	rules := []NFTRule{nftRule(addrMatch(true, network, false), addrMatch(true, subnet, true), notWireGuard, drop)}
	if peers.IsValid() {
		rules = append(rules, nftRule(addrMatch(true, peers, false), notWireGuard, drop))
	}
	return NFTChain{Name: nftStrictChain, Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityMangle, Rules: rules}
}

// StrictDrops counts the packets strict encryption dropped on this host,
// both families, in the mode the config uses; 0 when the rule is absent.
func StrictDrops(nft bool) (uint64, error) {
	if nft {
		conn, err := kernelNFT()
		if err != nil {
			return 0, err
		}
		return nftStrictDrops(conn)
	}
	var total uint64
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			continue
		}
		if ok, _ := ipt.ChainExists("mangle", StrictChain); !ok {
			continue
		}
		stats, err := ipt.Stats("mangle", StrictChain)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, s := range stats {
			// pkts bytes target prot opt in out source destination options
			if len(s) > 2 && s[2] == "DROP" {
				n, _ := strconv.ParseUint(s[0], 10, 64)
				total += n
			}
		}
	}
	return total, errors.Join(errs...)
}

// nftStrictDrops sums the counters of the strict chains of weft's tables.
func nftStrictDrops(conn nft.Conn) (uint64, error) {
	var total uint64
	for _, ipv6 := range []bool{false, true} {
		name, family := NFTTableName(ipv6)
		table, err := conn.ListTableOfFamily(name, family)
		if err != nil {
			continue
		}
		rules, err := conn.GetRules(table, &nftables.Chain{Name: nftStrictChain, Table: table})
		if err != nil {
			continue // no strict chain in this table
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Counter); ok {
					total += c.Packets
				}
			}
		}
	}
	return total, nil
}

// removeUnwanted removes from one iptables the chains that are there only
// while a setting asks for them: strict encryption's (a config without
// StrictEncryption) and the MSS clamp (no device carries a larger MTU).
func removeUnwanted(ipt Tables, s Settings, log *slog.Logger) error {
	var errs []error
	for _, u := range []struct {
		wanted bool
		chain  Chain
		why    string
	}{
		{s.Strict, StrictChainFor(netip.Prefix{}, netip.Prefix{}, netip.Prefix{}),
			"strict encryption's chain removed: the config has no StrictEncryption"},
		{s.ClampMTU > 0, MSSChainFor(false, 0), "MSS clamp removed: no WireGuard device carries a larger MTU"},
	} {
		if u.wanted {
			continue
		}
		if removed, err := removeChain(ipt, u.chain); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", u.chain.Name, err))
		} else if removed {
			log.Info(u.why, "chain", u.chain.Name)
		}
	}
	return errors.Join(errs...)
}

// removeChain removes a chain and its jump from one iptables; it says
// whether there was one.
func removeChain(ipt Tables, c Chain) (bool, error) {
	if ok, _ := ipt.ChainExists(c.Table, c.Name); !ok {
		return false, nil
	}
	if ok, _ := ipt.Exists(c.Table, c.From, c.Jump...); ok {
		if err := ipt.Delete(c.Table, c.From, c.Jump...); err != nil {
			return true, fmt.Errorf("removing the jump to %s: %w", c.Name, err)
		}
	}
	return true, ipt.ClearAndDeleteChain(c.Table, c.Name)
}
