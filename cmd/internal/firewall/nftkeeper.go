package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/weftnet/weft/backends/nft"
)

// kernelNFT opens a netlink connection to the kernel's nftables (the
// nft.Conn seam; nfttest.NFT is its fake).
func kernelNFT() (nft.Conn, error) { return nft.Open() }

// NFTablesKeeper keeps weft's nftables table for one family (and, with the
// forward rules, weft's rule in docker's DOCKER-USER chain when docker has
// one), restoring what was removed or changed by hand.
type NFTablesKeeper struct {
	settings Settings
	log      *slog.Logger
	// conn opens the nftables connection of a resync.
	conn func() (nft.Conn, error)
	// docker is iptables (ip6tables) for the DOCKER-USER rule; nil when the
	// host has none (then there is no docker chain to open either).
	docker Tables
}

// NewNFTablesKeeper checks that the kernel takes nftables requests and
// keeps the table settings ask for.
func NewNFTablesKeeper(settings Settings, log *slog.Logger) (*NFTablesKeeper, error) {
	conn, err := kernelNFT()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	name, family := NFTTableName(settings.IPv6)
	if _, err := conn.ListTablesOfFamily(family); err != nil {
		return nil, fmt.Errorf("nftables: listing tables for %s: %w (does the kernel have nf_tables?)", name, err)
	}
	proto := iptables.ProtocolIPv4
	if settings.IPv6 {
		proto = iptables.ProtocolIPv6
	}
	var docker Tables
	if ipt, err := iptables.NewWithProtocol(proto); err == nil {
		docker = ipt
	}
	k := NewNFTablesKeeperWith(nil, docker, settings, log)
	k.conn = kernelNFT
	return k, nil
}

// NewNFTablesKeeperWith is NewNFTablesKeeper over any nft.Conn and
// DOCKER-USER's Tables (nil: no docker), fakes in tests.
func NewNFTablesKeeperWith(conn nft.Conn, docker Tables, settings Settings, log *slog.Logger) *NFTablesKeeper {
	name, _ := NFTTableName(settings.IPv6)
	return &NFTablesKeeper{settings: settings, log: log.With("component", "nftables", "table", name), docker: docker,
		conn: func() (nft.Conn, error) { return conn, nil }}
}

// Run keeps the table in place until ctx ends; subnet returns the current
// lease's subnet of this family.
func (k *NFTablesKeeper) Run(ctx context.Context, network netip.Prefix, subnet func() netip.Prefix) error {
	return keep(ctx, k.settings.Resync, func() error { return k.Sync(network, subnet()) }, k.log,
		"nftables rules; retrying")
}

// Sync makes weft's table exactly the wanted one: when anything differs
// (a chain or rule missing or changed, an old subnet's rule) the whole
// table is replaced in one transaction, so there is no moment without it.
func (k *NFTablesKeeper) Sync(network, subnet netip.Prefix) error {
	want := NFTTableFor(k.settings.IPv6, network, subnet, k.settings.PeersNetwork, k.settings.Masq, k.settings.Forward,
		!k.settings.RandomFullyDisable)
	if k.settings.Strict {
		want.Chains = append(want.Chains, NFTStrictChainFor(network, subnet, k.settings.PeersNetwork))
	}
	if k.settings.ClampMTU > 0 {
		want.Chains = append(want.Chains, NFTMSSChainFor(k.settings.IPv6, k.settings.ClampMTU))
	}
	conn, err := k.conn()
	if err != nil {
		return err
	}
	var errs []error
	if same, err := nftTableIs(conn, want); err != nil || !same {
		if err := writeNFTTable(conn, want); err != nil {
			errs = append(errs, fmt.Errorf("writing table %s: %w", want.Name, err))
		} else {
			k.log.Info("table written", "chains", len(want.Chains))
		}
	}
	if k.settings.Forward && k.docker != nil {
		errs = append(errs, k.syncDockerUser(network))
	}
	return errors.Join(errs...)
}

// syncDockerUser keeps weft's rules (DockerUserRules) at the end of
// DOCKER-USER (before docker's closing RETURN) when docker has that chain,
// and removes weft's other rules there (another network's, another
// interface's, the older rule without one). At the end, an administrator's
// own rules there (inserted at the top, as docker's documentation shows)
// still filter overlay traffic, as they do in iptables mode. Docker makes
// the chain when it starts, so a later resync catches a docker started
// after weftd.
func (k *NFTablesKeeper) syncDockerUser(network netip.Prefix) error {
	// One listing per resync: the steady state runs iptables once.
	rules, ok := dockerUserRules(k.docker)
	if !ok {
		return nil
	}
	want := map[string][]string{}
	for _, r := range DockerUserRules(network, k.settings.overlay()) {
		want[dockerUserKey(r)] = r
	}
	var kept []dockerUserLine
	for _, r := range rules {
		switch {
		case r.weft != nil && want[r.key] != nil:
			delete(want, r.key) // in place
		case r.weft != nil:
			if err := k.docker.Delete("filter", DockerUserChain, r.weft...); err != nil {
				return fmt.Errorf("removing weft's rule %q from %s: %w", r.text, DockerUserChain, err)
			}
			continue
		}
		kept = append(kept, r)
	}
	for _, r := range DockerUserRules(network, k.settings.overlay()) {
		if want[dockerUserKey(r)] == nil {
			continue
		}
		var err error
		if n := len(kept); n > 0 && kept[n-1].text == "-A "+DockerUserChain+" -j RETURN" {
			err = k.docker.Insert("filter", DockerUserChain, n, r...)
			kept = append(kept[:n-1], dockerUserLine{}, kept[n-1])
		} else {
			err = k.docker.Append("filter", DockerUserChain, r...)
		}
		if err != nil {
			return fmt.Errorf("adding weft's rule to %s: %w", DockerUserChain, err)
		}
		k.log.Info("rule added to docker's chain", "chain", DockerUserChain, "rule", strings.Join(r, " "))
	}
	return nil
}

// overlay is the interfaces DockerUserRules accept the Network's traffic
// on: weft's devices, and those Settings.Overlay adds.
func (s Settings) overlay() []string { return append([]string{OverlayDevices}, s.Overlay...) }

// dockerUserLine is one rule of DOCKER-USER as `iptables -S` prints it;
// for one of weft's (by its comment), weft holds its arguments as weft
// writes them (to delete it) and key what tells it apart.
type dockerUserLine struct {
	text string
	weft []string
	key  string
}

// dockerUserKey is what tells weft's rules apart: the source, the
// destination and the interface matches, in the order they appear (iptables
// prints -s, -d, -i, -o in that order, as weft writes them).
func dockerUserKey(args []string) string {
	var parts []string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "-s", "-d", "-i", "-o":
			parts = append(parts, args[i], args[i+1])
			i++
		}
	}
	return strings.Join(parts, " ")
}

// dockerUserRules lists DOCKER-USER's rules; ok is false when there is no
// such chain.
func dockerUserRules(ipt Tables) (rules []dockerUserLine, ok bool) {
	lines, err := ipt.List("filter", DockerUserChain)
	if err != nil {
		return nil, false
	}
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "-A ") {
			continue // the chain's own "-N DOCKER-USER"
		}
		r := dockerUserLine{text: line}
		if strings.Contains(line, fwdComment) {
			fields := strings.Fields(line)[2:]
			r.key = dockerUserKey(fields)
			var match []string
			for i := 0; i+1 < len(fields); i++ {
				if strings.HasPrefix(fields[i], "-") && fields[i] != "-m" && fields[i] != "--comment" && fields[i] != "-j" {
					match = append(match, fields[i], fields[i+1])
					i++
				}
			}
			r.weft = rule(fwdComment, match, "-j", "ACCEPT")
		}
		rules = append(rules, r)
	}
	return rules, true
}

// removeDockerUserRules deletes all of weft's rules in DOCKER-USER and
// says how many.
func removeDockerUserRules(ipt Tables) (int, error) {
	rules, _ := dockerUserRules(ipt)
	n := 0
	for _, r := range rules {
		if r.weft == nil {
			continue
		}
		if err := ipt.Delete("filter", DockerUserChain, r.weft...); err != nil {
			return n, fmt.Errorf("removing weft's rule %q from %s: %w", r.text, DockerUserChain, err)
		}
		n++
	}
	return n, nil
}

// nftTableIs reports whether the kernel holds exactly want: its base
// chains with their hooks and priorities, and in each the wanted rules in
// order (told apart by their comments, which are their text).
func nftTableIs(conn nft.Conn, want NFTTable) (bool, error) {
	table, err := conn.ListTableOfFamily(want.Name, want.Family)
	if err != nil {
		return false, nil // no such table
	}
	chains, err := conn.ListChainsOfTableFamily(want.Family)
	if err != nil {
		return false, err
	}
	have := map[string]*nftables.Chain{}
	for _, c := range chains {
		if c.Table.Name == want.Name {
			have[c.Name] = c
		}
	}
	if len(have) != len(want.Chains) {
		return false, nil
	}
	for _, w := range want.Chains {
		c, ok := have[w.Name]
		if !ok || c.Type != w.Type || c.Hooknum == nil || *c.Hooknum != *w.Hook || c.Priority == nil ||
			*c.Priority != *w.Priority ||
			c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept {
			return false, nil
		}
		rules, err := conn.GetRules(table, c)
		if err != nil || len(rules) != len(w.Rules) {
			return false, err
		}
		for i, r := range rules {
			if text, _ := userdata.GetString(r.UserData, userdata.TypeComment); text != w.Rules[i].Text {
				return false, nil
			}
		}
	}
	return true, nil
}

// writeNFTTable replaces weft's table with want in one transaction: add
// (so the delete cannot fail on a missing table), delete, add anew.
func writeNFTTable(conn nft.Conn, want NFTTable) error {
	spec := &nftables.Table{Family: want.Family, Name: want.Name}
	conn.AddTable(spec)
	conn.DelTable(spec)
	table := conn.AddTable(&nftables.Table{Family: want.Family, Name: want.Name})
	accept := nftables.ChainPolicyAccept
	for _, w := range want.Chains {
		chain := conn.AddChain(&nftables.Chain{Name: w.Name, Table: table, Type: w.Type, Hooknum: w.Hook,
			Priority: w.Priority, Policy: &accept})
		for _, r := range w.Rules {
			conn.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: r.Exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, r.Text)})
		}
	}
	return conn.Flush()
}

// CleanupNFTables removes weft's nftables tables of both families and
// weft's rules in docker's DOCKER-USER chains; it returns what it removed.
// A kernel without nftables has nothing to remove.
func CleanupNFTables() (removed []string, err error) {
	removed, err = deleteNFTTables(NFTTableIPv4, NFTTableIPv6)
	errs := []error{err}
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, ierr := iptables.NewWithProtocol(proto)
		if ierr != nil {
			continue
		}
		n, derr := removeDockerUserRules(ipt)
		errs = append(errs, derr)
		if n > 0 {
			removed = append(removed, fmt.Sprintf("%d weft rule(s) in %s", n, DockerUserChain))
		}
	}
	return removed, errors.Join(errs...)
}

// deleteNFTTables deletes the IPv4 table named ipv4 and the IPv6 table
// named ipv6 where they exist, and says which it deleted. A kernel without
// nftables has none.
func deleteNFTTables(ipv4, ipv6 string) (removed []string, err error) {
	conn, err := kernelNFT()
	if err != nil {
		return nil, nil
	}
	return deleteNFTTablesOn(conn, ipv4, ipv6)
}

// deleteNFTTablesOn is deleteNFTTables on a connection.
func deleteNFTTablesOn(conn nft.Conn, ipv4, ipv6 string) (removed []string, err error) {
	var errs []error
	for name, family := range map[string]nftables.TableFamily{ipv4: nftables.TableFamilyIPv4,
		ipv6: nftables.TableFamilyIPv6} {
		if _, err := conn.ListTableOfFamily(name, family); err != nil {
			continue
		}
		conn.DelTable(&nftables.Table{Family: family, Name: name})
		if err := conn.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("removing nftables table %s: %w", name, err))
			continue
		}
		removed = append(removed, "nftables table "+name)
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}
