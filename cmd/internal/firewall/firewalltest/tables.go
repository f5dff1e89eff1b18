// Package firewalltest is an in-memory iptables for tests of the firewall
// package and its users: it keeps tables, chains and rules as iptables does
// and prints them as iptables-save would, so tests compare golden text
// without root. The real iptables is tested in the lab.
package firewalltest

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// builtin lists each table's built-in chains, in iptables-save's order.
var builtin = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// Tables is a fake iptables with the filter and nat tables. Its zero value
// is not usable; use New.
type Tables struct {
	// RandomFully is what HasRandomFully answers.
	RandomFully bool

	mu sync.Mutex
	// chains maps table → chain → rules, each rule its arguments.
	chains map[string]map[string][][]string
	// order keeps user chains in creation order, per table.
	order  map[string][]string
	writes int
}

// New returns iptables with empty built-in chains.
func New() *Tables {
	t := &Tables{chains: map[string]map[string][][]string{}, order: map[string][]string{}}
	for table, names := range builtin {
		t.chains[table] = map[string][][]string{}
		for _, c := range names {
			t.chains[table][c] = nil
		}
	}
	return t
}

func (t *Tables) chain(table, chain string) ([][]string, error) {
	chains, ok := t.chains[table]
	if !ok {
		return nil, fmt.Errorf("iptables: table %q does not exist", table)
	}
	rules, ok := chains[chain]
	if !ok {
		return nil, fmt.Errorf("iptables: chain %s/%s: No chain/target/match by that name", table, chain)
	}
	return rules, nil
}

func isBuiltin(table, chain string) bool { return slices.Contains(builtin[table], chain) }

// quote renders a rule as iptables -S does: arguments with spaces quoted.
func quote(spec []string) string {
	out := make([]string, len(spec))
	for i, a := range spec {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// List answers like `iptables -t table -S chain`.
func (t *Tables) List(table, chain string) ([]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.chain(table, chain)
	if err != nil {
		return nil, err
	}
	head := "-N " + chain
	if isBuiltin(table, chain) {
		head = "-P " + chain + " ACCEPT"
	}
	out := []string{head}
	for _, r := range rules {
		out = append(out, "-A "+chain+" "+quote(r))
	}
	return out, nil
}

// ClearChain flushes chain, creating it when it does not exist.
func (t *Tables) ClearChain(table, chain string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.chains[table]; !ok {
		return fmt.Errorf("iptables: table %q does not exist", table)
	}
	if _, ok := t.chains[table][chain]; !ok {
		t.order[table] = append(t.order[table], chain)
	}
	t.chains[table][chain] = nil
	t.writes++
	return nil
}

// Append adds a rule at the end of chain.
func (t *Tables) Append(table, chain string, rulespec ...string) error {
	return t.Insert(table, chain, 0, rulespec...)
}

// Insert adds a rule at 1-based position pos (0: at the end).
func (t *Tables) Insert(table, chain string, pos int, rulespec ...string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.chain(table, chain)
	if err != nil {
		return err
	}
	if target := jumpTarget(rulespec); target != "" && !isBuiltin(table, target) && t.target(table, target) == "" {
		return fmt.Errorf("iptables: chain %s/%s: jump to a chain that does not exist", table, target)
	}
	if pos < 0 || pos > len(rules)+1 {
		return fmt.Errorf("iptables: index of insertion too big")
	}
	if pos == 0 {
		pos = len(rules) + 1
	}
	t.chains[table][chain] = slices.Insert(rules, pos-1, slices.Clone(rulespec))
	t.writes++
	return nil
}

// DeleteById removes the rule at position id (from 1) of a chain.
func (t *Tables) DeleteById(table, chain string, id int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.chain(table, chain)
	if err != nil {
		return err
	}
	if id < 1 || id > len(rules) {
		return fmt.Errorf("iptables: index of deletion too big")
	}
	t.chains[table][chain] = slices.Delete(rules, id-1, id)
	t.writes++
	return nil
}

// jumpTarget is the chain a rule jumps to ("-j NAME"), or "".
func jumpTarget(spec []string) string {
	for i, a := range spec {
		if a == "-j" && i+1 < len(spec) {
			return spec[i+1]
		}
	}
	return ""
}

// target returns name when a user chain or a standard target of that name
// exists in table, so a jump to a missing user chain fails as in iptables.
func (t *Tables) target(table, name string) string {
	if _, ok := t.chains[table][name]; ok {
		return name
	}
	if strings.ToUpper(name) == name && !strings.Contains(name, "-") {
		return name // ACCEPT, RETURN, MASQUERADE, DROP: targets, not chains
	}
	return ""
}

// Exists reports whether chain holds exactly rulespec.
func (t *Tables) Exists(table, chain string, rulespec ...string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.chain(table, chain)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(rules, func(r []string) bool { return slices.Equal(r, rulespec) }), nil
}

// Delete removes the first rule equal to rulespec.
func (t *Tables) Delete(table, chain string, rulespec ...string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.chain(table, chain)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(rules, func(r []string) bool { return slices.Equal(r, rulespec) })
	if i < 0 {
		return fmt.Errorf("iptables: Bad rule (does a matching rule exist in that chain?)")
	}
	t.chains[table][chain] = slices.Delete(rules, i, i+1)
	t.writes++
	return nil
}

// ChainExists reports whether table has chain.
func (t *Tables) ChainExists(table, chain string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := t.chain(table, chain)
	return err == nil, nil
}

// ClearAndDeleteChain removes a user chain; a jump to it must be gone.
func (t *Tables) ClearAndDeleteChain(table, chain string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.chain(table, chain); err != nil {
		return nil
	}
	for from, rules := range t.chains[table] {
		for _, r := range rules {
			if jumpTarget(r) == chain {
				return fmt.Errorf("iptables: chain %s is still referenced from %s", chain, from)
			}
		}
	}
	delete(t.chains[table], chain)
	t.order[table] = slices.DeleteFunc(t.order[table], func(c string) bool { return c == chain })
	t.writes++
	return nil
}

// HasRandomFully reports RandomFully.
func (t *Tables) HasRandomFully() bool { return t.RandomFully }

// Writes counts the calls that changed anything, so a test can check that
// a sync of rules already right writes nothing.
func (t *Tables) Writes() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.writes
}

// Save prints every table that has rules or user chains, as iptables-save
// does (without counters or its comment lines).
func (t *Tables) Save() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for _, table := range []string{"filter", "nat", "mangle"} {
		chains := append(slices.Clone(builtin[table]), t.order[table]...)
		var body strings.Builder
		for _, c := range chains {
			for _, r := range t.chains[table][c] {
				fmt.Fprintf(&body, "-A %s %s\n", c, quote(r))
			}
		}
		if body.Len() == 0 && len(t.order[table]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", table)
		for _, c := range chains {
			policy := "-"
			if isBuiltin(table, c) {
				policy = "ACCEPT"
			}
			fmt.Fprintf(&b, ":%s %s\n", c, policy)
		}
		b.WriteString(body.String())
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
