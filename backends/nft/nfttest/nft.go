// Package nfttest is an in-memory nftables for the pure tier: the fake
// of the nft.Conn seam.
package nfttest

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/nft"
)

// NFT is an in-memory nftables (the calls of google/nftables' Conn weft
// makes): requests are queued and Flush applies them as one transaction,
// all or nothing, as the kernel does. It prints a table as `nft list table`
// would, with each rule's comment (weft's rule text) standing for its
// expressions. Its zero value is not usable; use NewNFT.
type NFT struct {
	mu      sync.Mutex
	tables  []*nftTable
	pending []func(tables []*nftTable) ([]*nftTable, error)
	// FlushErr, when set, fails every Flush (the transaction is dropped).
	FlushErr error
	flushes  int
}

type nftTable struct {
	spec   nftables.Table
	chains []*nftChain
	sets   []*nftSet
}

// nftSet is a named set and its elements, in the order added.
type nftSet struct {
	spec  nftables.Set
	elems []nftables.SetElement
}

type nftChain struct {
	spec  nftables.Chain
	rules []*nftables.Rule
}

var _ nft.Conn = (*NFT)(nil)

// NewNFT returns nftables with no tables.
func NewNFT() *NFT { return &NFT{} }

// Flushes counts the transactions sent (failed ones included).
func (n *NFT) Flushes() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.flushes
}

func find(tables []*nftTable, name string, family nftables.TableFamily) int {
	return slices.IndexFunc(tables, func(t *nftTable) bool { return t.spec.Name == name && t.spec.Family == family })
}

// ListTablesOfFamily lists the tables of a family.
func (n *NFT) ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*nftables.Table
	for _, t := range n.tables {
		if t.spec.Family == family {
			spec := t.spec
			out = append(out, &spec)
		}
	}
	return out, nil
}

// ListTableOfFamily returns a table, ENOENT when there is none.
func (n *NFT) ListTableOfFamily(name string, family nftables.TableFamily) (*nftables.Table, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := find(n.tables, name, family)
	if i < 0 {
		return nil, fmt.Errorf("nftables: table %s: %w", name, unix.ENOENT)
	}
	spec := n.tables[i].spec
	return &spec, nil
}

// ListChainsOfTableFamily lists the chains of every table of a family.
func (n *NFT) ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*nftables.Chain
	for _, t := range n.tables {
		if t.spec.Family != family {
			continue
		}
		for _, c := range t.chains {
			spec := c.spec
			table := t.spec
			spec.Table = &table
			out = append(out, &spec)
		}
	}
	return out, nil
}

// GetRules lists a chain's rules in order.
func (n *NFT) GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := find(n.tables, t.Name, t.Family)
	if i < 0 {
		return nil, fmt.Errorf("nftables: table %s: %w", t.Name, unix.ENOENT)
	}
	for _, ch := range n.tables[i].chains {
		if ch.spec.Name == c.Name {
			return slices.Clone(ch.rules), nil
		}
	}
	return nil, fmt.Errorf("nftables: chain %s: %w", c.Name, unix.ENOENT)
}

func (n *NFT) queue(op func([]*nftTable) ([]*nftTable, error)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pending = append(n.pending, op)
}

// AddTable queues the creation of a table (none when it exists).
func (n *NFT) AddTable(t *nftables.Table) *nftables.Table {
	spec := *t
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		if find(tables, spec.Name, spec.Family) < 0 {
			tables = append(tables, &nftTable{spec: spec})
		}
		return tables, nil
	})
	return t
}

// DelTable queues the deletion of a table; the transaction fails when it
// is not there.
func (n *NFT) DelTable(t *nftables.Table) {
	spec := *t
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		i := find(tables, spec.Name, spec.Family)
		if i < 0 {
			return nil, fmt.Errorf("nftables: deleting table %s: %w", spec.Name, unix.ENOENT)
		}
		return slices.Delete(tables, i, i+1), nil
	})
}

// AddChain queues a chain in its table.
func (n *NFT) AddChain(c *nftables.Chain) *nftables.Chain {
	spec := *c
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		i := find(tables, spec.Table.Name, spec.Table.Family)
		if i < 0 {
			return nil, fmt.Errorf("nftables: chain %s: table %s: %w", spec.Name, spec.Table.Name, unix.ENOENT)
		}
		tables[i].chains = append(tables[i].chains, &nftChain{spec: spec})
		return tables, nil
	})
	return c
}

// AddRule queues a rule at the end of its chain.
func (n *NFT) AddRule(r *nftables.Rule) *nftables.Rule {
	rule := *r
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		i := find(tables, rule.Table.Name, rule.Table.Family)
		if i < 0 {
			return nil, fmt.Errorf("nftables: rule: table %s: %w", rule.Table.Name, unix.ENOENT)
		}
		for _, c := range tables[i].chains {
			if c.spec.Name == rule.Chain.Name {
				c.rules = append(c.rules, &rule)
				return tables, nil
			}
		}
		return nil, fmt.Errorf("nftables: rule: chain %s: %w", rule.Chain.Name, unix.ENOENT)
	})
	return r
}

// set finds a set of a table in tables; nil when either is missing.
func set(tables []*nftTable, t *nftables.Table, name string) *nftSet {
	i := find(tables, t.Name, t.Family)
	if i < 0 {
		return nil
	}
	for _, st := range tables[i].sets {
		if st.spec.Name == name {
			return st
		}
	}
	return nil
}

// AddSet queues a set in its table with vals as its first elements.
func (n *NFT) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	spec := *s
	vals = slices.Clone(vals)
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		i := find(tables, spec.Table.Name, spec.Table.Family)
		if i < 0 {
			return nil, fmt.Errorf("nftables: set %s: table %s: %w", spec.Name, spec.Table.Name, unix.ENOENT)
		}
		if set(tables, spec.Table, spec.Name) == nil {
			tables[i].sets = append(tables[i].sets, &nftSet{spec: spec, elems: vals})
		}
		return tables, nil
	})
	return nil
}

// GetSetByName returns a set of a table, ENOENT when there is none.
func (n *NFT) GetSetByName(t *nftables.Table, name string) (*nftables.Set, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := set(n.tables, t, name)
	if st == nil {
		return nil, fmt.Errorf("nftables: set %s of table %s: %w", name, t.Name, unix.ENOENT)
	}
	spec := st.spec
	table := n.tables[find(n.tables, t.Name, t.Family)].spec
	spec.Table = &table
	return &spec, nil
}

// GetSetElements lists a set's elements.
func (n *NFT) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := set(n.tables, s.Table, s.Name)
	if st == nil {
		return nil, fmt.Errorf("nftables: set %s: %w", s.Name, unix.ENOENT)
	}
	return slices.Clone(st.elems), nil
}

// SetAddElements queues elements for a set; one it holds already stays
// once.
func (n *NFT) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	vals = slices.Clone(vals)
	n.queueOnSet(s, "adding to", func(st *nftSet) error {
		for _, v := range vals {
			if !slices.ContainsFunc(st.elems, sameKey(v)) {
				st.elems = append(st.elems, v)
			}
		}
		return nil
	})
	return nil
}

// SetDeleteElements queues the removal of elements from a set; the
// transaction fails when one is not there, as the kernel's does.
func (n *NFT) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	vals = slices.Clone(vals)
	n.queueOnSet(s, "deleting from", func(st *nftSet) error {
		for _, v := range vals {
			i := slices.IndexFunc(st.elems, sameKey(v))
			if i < 0 {
				return fmt.Errorf("nftables: deleting from set %s: element %x: %w", st.spec.Name, v.Key, unix.ENOENT)
			}
			st.elems = slices.Delete(st.elems, i, i+1)
		}
		return nil
	})
	return nil
}

// queueOnSet queues f on a set's elements (s is copied now); the
// transaction fails when the set is missing.
func (n *NFT) queueOnSet(s *nftables.Set, doing string, f func(st *nftSet) error) {
	spec := *s
	n.queue(func(tables []*nftTable) ([]*nftTable, error) {
		st := set(tables, spec.Table, spec.Name)
		if st == nil {
			return nil, fmt.Errorf("nftables: %s set %s: %w", doing, spec.Name, unix.ENOENT)
		}
		return tables, f(st)
	})
}

// sameKey matches an element with v's key.
func sameKey(v nftables.SetElement) func(nftables.SetElement) bool {
	return func(e nftables.SetElement) bool { return string(e.Key) == string(v.Key) }
}

// DeleteElement removes an address from a set at once, as an
// administrator's `nft delete element` would; false when it is not there.
func (n *NFT) DeleteElement(table *nftables.Table, setName string, addr netip.Addr) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := set(n.tables, table, setName)
	if st == nil {
		return false
	}
	i := slices.IndexFunc(st.elems, sameKey(nftables.SetElement{Key: addr.AsSlice()}))
	if i < 0 {
		return false
	}
	st.elems = slices.Delete(st.elems, i, i+1)
	return true
}

// Flush applies the queued requests as one transaction.
func (n *NFT) Flush() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.flushes++
	ops := n.pending
	n.pending = nil
	if n.FlushErr != nil {
		return n.FlushErr
	}
	tables := n.copyTables()
	var err error
	for _, op := range ops {
		if tables, err = op(tables); err != nil {
			return err
		}
	}
	n.tables = tables
	return nil
}

// copyTables is a deep copy of the tables (n.mu held), for a transaction
// to work on.
func (n *NFT) copyTables() []*nftTable {
	out := make([]*nftTable, 0, len(n.tables))
	for _, t := range n.tables {
		c := &nftTable{spec: t.spec}
		for _, ch := range t.chains {
			c.chains = append(c.chains, &nftChain{spec: ch.spec, rules: slices.Clone(ch.rules)})
		}
		for _, st := range t.sets {
			c.sets = append(c.sets, &nftSet{spec: st.spec, elems: slices.Clone(st.elems)})
		}
		out = append(out, c)
	}
	return out
}

// DeleteRule removes a rule by its comment, as an administrator's
// `nft delete rule` would; false when no chain holds it.
func (n *NFT) DeleteRule(comment string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, t := range n.tables {
		for _, c := range t.chains {
			for i, r := range c.rules {
				if text, _ := userdata.GetString(r.UserData, userdata.TypeComment); text == comment {
					c.rules = slices.Delete(c.rules, i, i+1)
					return true
				}
			}
		}
	}
	return false
}

// hookNames and familyNames are nft's words for netfilter's numbers.
var (
	hookNames   = map[nftables.ChainHook]string{0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting"}
	familyNames = map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6",
		nftables.TableFamilyINet: "inet"}
)

// List prints a table as `nft list table FAMILY NAME` does, each rule as
// its comment (weft's rule text); a missing table prints nft's error.
func (n *NFT) List(name string, family nftables.TableFamily) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	i := find(n.tables, name, family)
	if i < 0 {
		return fmt.Sprintf("Error: No such file or directory; list table %s %s\n", familyNames[family], name)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", familyNames[family], name)
	for j, st := range n.tables[i].sets {
		if j > 0 {
			b.WriteString("\n")
		}
		listSet(&b, st)
	}
	for j, c := range n.tables[i].chains {
		if j > 0 || len(n.tables[i].sets) > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", c.spec.Name)
		if c.spec.Hooknum != nil {
			policy := "drop"
			if c.spec.Policy != nil && *c.spec.Policy == nftables.ChainPolicyAccept {
				policy = "accept"
			}
			var prio int32
			if c.spec.Priority != nil {
				prio = int32(*c.spec.Priority)
			}
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d; policy %s;\n", c.spec.Type, hookNames[*c.spec.Hooknum], prio,
				policy)
		}
		for _, r := range c.rules {
			text, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			fmt.Fprintf(&b, "\t\t%s\n", text)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// listSet prints a set as nft does: its type, its size and flags when
// set, its elements (addresses) in nft's order (sorted).
func listSet(b *strings.Builder, st *nftSet) {
	fmt.Fprintf(b, "\tset %s {\n\t\ttype %s\n", st.spec.Name, st.spec.KeyType.Name)
	if st.spec.Size > 0 {
		fmt.Fprintf(b, "\t\tsize %d\n", st.spec.Size)
	}
	var flags []string
	if st.spec.Dynamic {
		flags = append(flags, "dynamic")
	}
	if st.spec.HasTimeout {
		flags = append(flags, "timeout")
	}
	if len(flags) > 0 {
		fmt.Fprintf(b, "\t\tflags %s\n", strings.Join(flags, ","))
	}
	if st.spec.Timeout > 0 {
		fmt.Fprintf(b, "\t\ttimeout %s\n", nftDuration(st.spec.Timeout))
	}
	var addrs []netip.Addr
	for _, e := range st.elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	if len(addrs) > 0 {
		texts := make([]string, len(addrs))
		for i, a := range addrs {
			texts[i] = a.String()
		}
		fmt.Fprintf(b, "\t\telements = { %s }\n", strings.Join(texts, ", "))
	}
	b.WriteString("\t}\n")
}

// nftDuration prints d as nft does: "10m", "1h30m", "45s".
func nftDuration(d time.Duration) string {
	out := ""
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if n := d / u.unit; n > 0 {
			out += fmt.Sprintf("%d%s", n, u.name)
			d -= n * u.unit
		}
	}
	return out
}

// ErrInjected is what a test sets as FlushErr when the reason does not
// matter.
var ErrInjected = errors.New("nfttest: injected failure")
