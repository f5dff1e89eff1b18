// Package tunnelfilter keeps the nftables table that accepts tunnel
// packets (VXLAN on its UDP port, IP-in-IP) only from the underlay
// addresses of current leases. The kernel's vxlan device takes VXLAN from
// any source whose inner frame names its VTEP MAC (which the lease
// publishes), and an ipip device with no remote takes IP-in-IP from
// anyone: without the filter, anyone who can reach a host's PublicIP
// injects packets with a chosen inner source into its containers.
//
// The table (inet weft-tunnel) holds a set of peer addresses per family,
// changed element by element as leases come and go (never rewritten as a
// whole), an input chain that drops the tunnel's packets from any other
// source, and a set of the dropped sources with a counter each.
package tunnelfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/nft"
)

// TableName is weft's tunnel filter table (family inet).
const TableName = "weft-tunnel"

// Set and chain names in the table.
const (
	peers4   = "peers4"
	peers6   = "peers6"
	dropped4 = "dropped4"
	dropped6 = "dropped6"
	chain    = "input"
)

// droppedTimeout is how long a dropped source is remembered with its
// count after its last packet, and droppedSize how many are: a flood from
// spoofed sources fills the set, and the drop rule, which does not depend
// on it, still drops.
const (
	droppedTimeout = 10 * time.Minute
	droppedSize    = 4096
)

// Tunnel says which packets the filter guards.
type Tunnel struct {
	// VXLANPort is vxlan's UDP port (0: no VXLAN).
	VXLANPort uint16
	// IPIP guards IP-in-IP (IPv4 protocol 4).
	IPIP bool
}

// Filter keeps the table for one Tunnel. Its zero value is not usable;
// use New.
type Filter struct {
	conn   nft.Conn
	tunnel Tunnel
	table  *nftables.Table
}

// New returns a filter for tunnel over conn; Ensure puts the table in
// place.
func New(conn nft.Conn, tunnel Tunnel) *Filter {
	return &Filter{conn: conn, tunnel: tunnel, table: &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}}
}

// rule is one rule of the chain: its text (also its comment, which is how
// Ensure tells the table is as wanted) and expressions.
type rule struct {
	text  string
	exprs []expr.Any
}

// rules are the chain's rules for the tunnel: per guarded path and family,
// one that counts the source in the dropped set (it may fail when the set
// is full, which ends that rule only) and one that drops.
func (f *Filter) rules(sets map[string]*nftables.Set) []rule {
	type path struct {
		text  string
		match []expr.Any
		ipv6  bool
	}
	var paths []path
	if p := f.tunnel.VXLANPort; p != 0 {
		udp := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
		}
		paths = append(paths, path{fmt.Sprintf("udp dport %d", p), udp, false}, path{fmt.Sprintf("udp dport %d", p), udp, true})
	}
	if f.tunnel.IPIP {
		paths = append(paths, path{"meta l4proto ipencap", []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_IPIP}},
		}, false})
	}
	var out []rule
	for _, p := range paths {
		family, nfproto, offset, size, peers, dropped := "ip", byte(unix.NFPROTO_IPV4), uint32(12), uint32(4), sets[peers4], sets[dropped4]
		if p.ipv6 {
			family, nfproto, offset, size, peers, dropped = "ip6", unix.NFPROTO_IPV6, 8, 16, sets[peers6], sets[dropped6]
		}
		match := append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		}, p.match...)
		match = append(match,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
			&expr.Lookup{SourceRegister: 1, SetName: peers.Name, SetID: peers.ID, Invert: true})
		// As nft prints it (the family check is implied by the address).
		text := fmt.Sprintf("%s %s saddr != @%s", p.text, family, peers.Name)
		out = append(out,
			rule{text + " update @" + dropped.Name + " { " + family + " saddr counter }", append(slices.Clone(match),
				&expr.Dynset{SrcRegKey: 1, SetName: dropped.Name, SetID: dropped.ID, Operation: unix.NFT_DYNSET_OP_UPDATE,
					Exprs: []expr.Any{&expr.Counter{}}})},
			rule{text + " counter drop", append(slices.Clone(match), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	return out
}

// Ensure puts the table in place when it is missing or differs (another
// port, a rule changed by hand), keeping the peer addresses it held, in one
// transaction: the chain never exists without its sets filled as before.
// A table already as wanted is left alone.
func (f *Filter) Ensure() error {
	if f.current() {
		return nil
	}
	keep4, _ := f.elements(peers4)
	keep6, _ := f.elements(peers6)
	// The kept elements go in with the table as far as one transaction
	// holds them (messagesPerTransaction, half per family); the rest follow
	// at once in transactions of their own.
	var later []netip.Addr
	keep4, later = splitAt(keep4, messagesPerTransaction/2*elementsPerMessage, later)
	keep6, later = splitAt(keep6, messagesPerTransaction/2*elementsPerMessage, later)
	c := f.conn
	c.AddTable(f.table)
	c.DelTable(f.table) // add first, so the delete cannot fail on a missing table
	table := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName})
	sets := map[string]*nftables.Set{}
	for _, s := range []struct {
		name    string
		ipv6    bool
		dropped bool
		keep    []netip.Addr
	}{{peers4, false, false, keep4}, {peers6, true, false, keep6}, {dropped4, false, true, nil}, {dropped6, true, true, nil}} {
		set := &nftables.Set{Table: table, Name: s.name, KeyType: nftables.TypeIPAddr}
		if s.ipv6 {
			set.KeyType = nftables.TypeIP6Addr
		}
		if s.dropped {
			set.Dynamic, set.HasTimeout, set.Timeout, set.Size = true, true, droppedTimeout, droppedSize
		}
		if err := c.AddSet(set, nil); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.name, err)
		}
		for chunk := range slices.Chunk(s.keep, elementsPerMessage) {
			if err := c.SetAddElements(set, elements(chunk)); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.name, err)
			}
		}
		sets[s.name] = set
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: chain, Table: table, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter, Policy: &accept})
	for _, r := range f.rules(sets) {
		c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs, UserData: userdata.AppendString(nil, userdata.TypeComment, r.text)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing nftables table %s: %w", TableName, err)
	}
	return f.Update(later, nil)
}

// splitAt keeps the first n of addrs and appends the rest to later.
func splitAt(addrs []netip.Addr, n int, later []netip.Addr) ([]netip.Addr, []netip.Addr) {
	if len(addrs) <= n {
		return addrs, later
	}
	return addrs[:n], append(later, addrs[n:]...)
}

// InPlace reports whether the table is there as Ensure makes it: its
// chain, its rules and its sets (a `nft flush ruleset` takes them all).
func (f *Filter) InPlace() bool { return f.current() }

// current reports whether the table holds exactly the wanted chain and
// rules (told apart by their comments).
func (f *Filter) current() bool {
	if _, err := f.conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		return false
	}
	chains, err := f.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	var ch *nftables.Chain
	for _, c := range chains {
		if c.Table.Name == TableName && c.Name == chain {
			ch = c
		}
	}
	if ch == nil {
		return false
	}
	have, err := f.conn.GetRules(f.table, ch)
	sets := map[string]*nftables.Set{}
	for _, name := range []string{peers4, peers6, dropped4, dropped6} {
		s, serr := f.conn.GetSetByName(f.table, name)
		if serr != nil {
			return false
		}
		sets[name] = s
	}
	want := f.rules(sets)
	if err != nil || len(have) != len(want) {
		return false
	}
	for i, r := range have {
		if text, _ := userdata.GetString(r.UserData, userdata.TypeComment); text != want[i].text {
			return false
		}
	}
	return true
}

// elements lists a set's addresses.
func (f *Filter) elements(name string) ([]netip.Addr, error) {
	set, err := f.conn.GetSetByName(f.table, name)
	if err != nil {
		return nil, err
	}
	elems, err := f.conn.GetSetElements(set)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(elems))
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

func elements(addrs []netip.Addr) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, nftables.SetElement{Key: a.AsSlice()})
	}
	return out
}

// elementsPerMessage is how many set elements go in one netlink message.
const elementsPerMessage = 512

// messagesPerTransaction bounds the messages sent in one transaction: the
// library sends a transaction in one sendmsg, which the kernel refuses
// above its limit (EMSGSIZE: at 50,000 peers, weftd never got READY).
const messagesPerTransaction = 8

// Peers lists the addresses the filter accepts tunnel packets from.
func (f *Filter) Peers() ([]netip.Addr, error) {
	v4, err := f.elements(peers4)
	if err != nil {
		return nil, err
	}
	v6, err := f.elements(peers6)
	return append(v4, v6...), err
}

// Update adds and removes peer addresses, element by element: its cost
// follows the change, not the number of peers. A large change goes in
// several transactions (messagesPerTransaction); each leaves the sets
// consistent, since an element added or removed early harms nothing.
func (f *Filter) Update(add, remove []netip.Addr) error {
	if len(add) == 0 && len(remove) == 0 {
		return nil
	}
	messages := 0
	sent := func() error {
		if messages++; messages%messagesPerTransaction == 0 {
			return f.conn.Flush()
		}
		return nil
	}
	for _, family := range []struct {
		name string
		is6  bool
	}{{peers4, false}, {peers6, true}} {
		in := func(a netip.Addr) bool { return a.Is6() == family.is6 }
		adds, removes := filterAddrs(add, in), filterAddrs(remove, in)
		if len(adds) == 0 && len(removes) == 0 {
			continue
		}
		set, err := f.conn.GetSetByName(f.table, family.name)
		if err != nil {
			return fmt.Errorf("nftables set %s of %s: %w", family.name, TableName, err)
		}
		// In chunks: one netlink message holds only so many elements (a
		// larger one is cut short without an error), and a transaction may
		// hold many messages.
		for chunk := range slices.Chunk(removes, elementsPerMessage) {
			if err := f.conn.SetDeleteElements(set, elements(chunk)); err != nil {
				return err
			}
			if err := sent(); err != nil {
				return err
			}
		}
		for chunk := range slices.Chunk(adds, elementsPerMessage) {
			if err := f.conn.SetAddElements(set, elements(chunk)); err != nil {
				return err
			}
			if err := sent(); err != nil {
				return err
			}
		}
	}
	return f.conn.Flush()
}

func filterAddrs(addrs []netip.Addr, keep func(netip.Addr) bool) []netip.Addr {
	var out []netip.Addr
	for _, a := range addrs {
		if a.IsValid() && keep(a.Unmap()) {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Sync makes the peer sets exactly want, changing only the elements that
// differ (a resync heals an element removed by hand).
func (f *Filter) Sync(want []netip.Addr) error {
	have, err := f.Peers()
	if err != nil {
		return err
	}
	wanted := map[netip.Addr]bool{}
	for _, a := range want {
		if a.IsValid() {
			wanted[a.Unmap()] = true
		}
	}
	var add, remove []netip.Addr
	present := map[netip.Addr]bool{}
	for _, a := range have {
		present[a] = true
		if !wanted[a] {
			remove = append(remove, a)
		}
	}
	for a := range wanted {
		if !present[a] {
			add = append(add, a)
		}
	}
	return f.Update(add, remove)
}

// Drops returns the packets dropped per source address still remembered
// (dropped within droppedTimeout).
func (f *Filter) Drops() (map[netip.Addr]uint64, error) {
	out := map[netip.Addr]uint64{}
	var errs []error
	for _, name := range []string{dropped4, dropped6} {
		set, err := f.conn.GetSetByName(f.table, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		elems, err := f.conn.GetSetElements(set)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range elems {
			a, ok := netip.AddrFromSlice(e.Key)
			if ok && e.Counter != nil {
				out[a] = e.Counter.Packets
			}
		}
	}
	return out, errors.Join(errs...)
}

// Remove deletes the filter's table (-cleanup-on-exit).
func (f *Filter) Remove() error {
	_, err := Remove(f.conn)
	return err
}

// Remove deletes the table (weftctl cleanup; the filter turned off). It
// reports whether there was one.
func Remove(conn nft.Conn) (bool, error) {
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	if _, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		return false, nil
	}
	conn.DelTable(t)
	return true, conn.Flush()
}
