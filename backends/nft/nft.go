// Package nft is weft's seam to the kernel's nftables: the calls of
// google/nftables' Conn that weft makes, in one interface used by the
// firewall's rules (cmd/internal/firewall) and the tunnel source filter
// (backends/tunnelfilter). nfttest holds a fake that prints what `nft
// list table` would, sets included, for the pure tier; the real kernel is
// tried in the netns tier.
package nft

import "github.com/google/nftables"

// Conn is what weft needs of nftables: tables, chains, rules and sets,
// queued and sent as one transaction by Flush. *nftables.Conn is one.
type Conn interface {
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	ListTableOfFamily(name string, family nftables.TableFamily) (*nftables.Table, error)
	ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	GetSetByName(t *nftables.Table, name string) (*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	AddRule(r *nftables.Rule) *nftables.Rule
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	Flush() error
}

var _ Conn = (*nftables.Conn)(nil)

// Open opens a netlink connection to the kernel's nftables (in this
// process's network namespace).
func Open() (Conn, error) { return nftables.New() }
