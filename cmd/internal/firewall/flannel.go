package firewall

import (
	"errors"
	"fmt"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// flannelChain is a chain flanneld keeps and leaves behind when it stops,
// with the built-in chain that jumps to it.
type flannelChain struct{ table, name, from string }

// flannelChains are flanneld's masquerade and forward chains.
func flannelChains() []flannelChain {
	return []flannelChain{{"nat", "FLANNEL-POSTRTG", "POSTROUTING"}, {"filter", "FLANNEL-FWD", "FORWARD"}}
}

// RemoveFlannel removes what flanneld's firewall leaves on a host moving
// to weft (`weftctl cleanup -flannel`): the tables of its nftables mode
// (flannel-ipv4, flannel-ipv6) and, where iptables is installed, every
// jump to its chains, then the chains. It returns what it removed.
func RemoveFlannel() ([]string, error) {
	removed, err := deleteNFTTables("flannel-ipv4", "flannel-ipv6")
	errs := []error{err}
	if ipt, ierr := iptables.New(); ierr == nil {
		chains, err := removeFlannelChains(ipt)
		for _, c := range chains {
			removed = append(removed, "iptables "+c)
		}
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// removeFlannelChains removes flanneld's iptables chains and the jumps to
// them.
func removeFlannelChains(ipt Tables) ([]string, error) {
	var removed []string
	var errs []error
	for _, c := range flannelChains() {
		if ok, _ := ipt.ChainExists(c.table, c.name); !ok {
			continue
		}
		rules, err := ipt.List(c.table, c.from)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range rules {
			spec, ok := strings.CutPrefix(r, "-A "+c.from+" ")
			if !ok {
				continue
			}
			args := splitRule(spec)
			if len(args) < 2 || args[len(args)-2] != "-j" || args[len(args)-1] != c.name {
				continue
			}
			if err := ipt.Delete(c.table, c.from, args...); err != nil {
				errs = append(errs, fmt.Errorf("removing the jump to %s: %w", c.name, err))
				continue
			}
			removed = append(removed, fmt.Sprintf("%s jump %s -> %s", c.table, c.from, c.name))
		}
		if err := ipt.ClearAndDeleteChain(c.table, c.name); err != nil {
			errs = append(errs, fmt.Errorf("removing chain %s: %w", c.name, err))
			continue
		}
		removed = append(removed, fmt.Sprintf("%s chain %s", c.table, c.name))
	}
	return removed, errors.Join(errs...)
}

// splitRule splits a rule as `iptables -S` prints it into arguments,
// keeping a double-quoted comment as one.
func splitRule(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}
