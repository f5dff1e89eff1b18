package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Tables is what the IPTablesKeeper needs from iptables: go-iptables' calls of the
// same names, which run the iptables command. firewalltest.Tables is a fake
// that prints its state as iptables-save does.
type Tables interface {
	List(table, chain string) ([]string, error)
	ClearChain(table, chain string) error
	Append(table, chain string, rulespec ...string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Exists(table, chain string, rulespec ...string) (bool, error)
	Delete(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
	ChainExists(table, chain string) (bool, error)
	ClearAndDeleteChain(table, chain string) error
	HasRandomFully() bool
}

var _ Tables = (*iptables.IPTables)(nil)

// IPTablesKeeper installs weft's chains and re-checks them every interval,
// restoring whatever was removed or changed by hand.
type IPTablesKeeper struct {
	ipt      Tables
	settings Settings
	log      *slog.Logger
}

// Settings say which chains or table a keeper keeps and how, from weftd's flags.
type Settings struct {
	// Masq keeps the masquerade chain (-ip-masq).
	Masq bool
	// Forward keeps the forward chain (-iptables-forward-rules).
	Forward bool
	// RandomFullyDisable leaves --random-fully off the masquerade rules
	// (-ip-masq-fully-random-disable).
	RandomFullyDisable bool
	// Resync is how often the chains are checked (-iptables-resync).
	Resync time.Duration
	// IPv6 keeps the chains with ip6tables, for the IPv6 half of a
	// dual-stack network.
	IPv6 bool
	// PeersNetwork is the outside peers' network, not masqueraded to;
	// invalid for none.
	PeersNetwork netip.Prefix
	// Strict keeps strict encryption's drop (StrictChainFor,
	// NFTStrictChainFor): the config's "StrictEncryption".
	Strict bool
	// ClampMTU, when not 0, clamps the MSS of TCP leaving by weft's
	// WireGuard devices to what this MTU (WireGuard's own) holds: the
	// devices carry a larger one for containers started under a previous
	// backend (MSSChainFor).
	ClampMTU int
	// Overlay names interfaces besides weft's devices that carry overlay
	// traffic (the external interface, for host-gw, extension and
	// DirectRouting peers): nftables mode accepts the Network's traffic
	// in DOCKER-USER only through those and weft's devices.
	Overlay []string
}

// NewIPTablesKeeper finds iptables (ip6tables for Settings.IPv6) and
// keeps the chains settings ask for.
func NewIPTablesKeeper(settings Settings, log *slog.Logger) (*IPTablesKeeper, error) {
	proto, name := iptables.ProtocolIPv4, "iptables"
	if settings.IPv6 {
		proto, name = iptables.ProtocolIPv6, "ip6tables"
	}
	ipt, err := iptables.NewWithProtocol(proto)
	if err != nil {
		return nil, fmt.Errorf("%s (needed for -ip-masq and -iptables-forward-rules): %w", name, err)
	}
	k := NewIPTablesKeeperWith(ipt, settings, log)
	if settings.IPv6 {
		k.log = k.log.With("family", "ipv6")
	}
	return k, nil
}

// NewIPTablesKeeperWith is NewIPTablesKeeper over any Tables (a fake in
// tests).
func NewIPTablesKeeperWith(ipt Tables, settings Settings, log *slog.Logger) *IPTablesKeeper {
	return &IPTablesKeeper{ipt: ipt, settings: settings, log: log.With("component", "iptables")}
}

// chains lists the chains wanted for this network and subnet.
func (k *IPTablesKeeper) chains(network, subnet netip.Prefix) []Chain {
	var out []Chain
	if k.settings.Masq {
		out = append(out, MasqChainFor(network, subnet, k.settings.PeersNetwork,
			k.ipt.HasRandomFully() && !k.settings.RandomFullyDisable))
	}
	if k.settings.Forward {
		out = append(out, ForwardChainFor(network))
	}
	if k.settings.Strict {
		out = append(out, StrictChainFor(network, subnet, k.settings.PeersNetwork))
	}
	if k.settings.ClampMTU > 0 {
		out = append(out, MSSChainFor(k.settings.IPv6, k.settings.ClampMTU))
	}
	return out
}

// Run keeps the chains in place until ctx ends; subnet returns the
// current lease's subnet (it may change after a re-claim).
func (k *IPTablesKeeper) Run(ctx context.Context, network netip.Prefix, subnet func() netip.Prefix) error {
	return keep(ctx, k.settings.Resync, func() error { return k.Sync(network, subnet()) }, k.log,
		"iptables rules; retrying")
}

// keep runs sync now and every interval until ctx ends, logging an error
// once until it changes or clears.
func keep(ctx context.Context, interval time.Duration, sync func() error, log *slog.Logger, what string) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	lastErr := ""
	for {
		err := sync()
		if msg := fmt.Sprint(err); err != nil && msg != lastErr {
			log.Error(what, "err", err)
		}
		lastErr = fmt.Sprint(err)
		if err == nil {
			lastErr = ""
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// Sync makes every wanted chain exactly right. A chain that differs in any
// way (a rule deleted by hand, an old subnet's rule) is rebuilt whole.
func (k *IPTablesKeeper) Sync(network, subnet netip.Prefix) error {
	var errs []error
	for _, c := range k.chains(network, subnet) {
		if err := k.syncChain(c); err != nil {
			errs = append(errs, fmt.Errorf("%s chain %s: %w", c.Table, c.Name, err))
		}
	}
	errs = append(errs, removeUnwanted(k.ipt, k.settings, k.log))
	return errors.Join(errs...)
}

func (k *IPTablesKeeper) syncChain(c Chain) error {
	have, err := k.ipt.List(c.Table, c.Name)
	if err != nil {
		// No such chain yet: make it empty.
		if err := k.ipt.ClearChain(c.Table, c.Name); err != nil {
			return err
		}
		have = []string{"-N " + c.Name}
	}
	if !sameRules(have, c) {
		// The wanted rules go in on top and the old ones come off the
		// bottom, so the chain is never empty meanwhile (strict
		// encryption's drop must not open for a moment).
		for i, r := range c.Rules {
			if err := k.ipt.Insert(c.Table, c.Name, i+1, r...); err != nil {
				return err
			}
		}
		for range len(have) - 1 {
			if err := k.ipt.DeleteById(c.Table, c.Name, len(c.Rules)+1); err != nil {
				return err
			}
		}
		k.log.Info("chain written", "table", c.Table, "chain", c.Name, "rules", len(c.Rules))
	}
	ok, err := k.ipt.Exists(c.Table, c.From, c.Jump...)
	if err != nil {
		return err
	}
	switch {
	case ok:
	case c.First:
		if err := k.ipt.Insert(c.Table, c.From, 1, c.Jump...); err != nil {
			return err
		}
		k.log.Info("jump added", "table", c.Table, "from", c.From, "to", c.Name, "first", true)
	default:
		// Appended, as flannel does: docker's chains (DOCKER-USER, where an
		// administrator filters container traffic) stay in front of weft's
		// ACCEPT for the Network, also when weft re-adds a jump removed by
		// hand or starts after dockerd.
		if err := k.ipt.Append(c.Table, c.From, c.Jump...); err != nil {
			return err
		}
		k.log.Info("jump added", "table", c.Table, "from", c.From, "to", c.Name)
	}
	return nil
}

// sameRules compares `iptables -S chain` output with the wanted rules.
func sameRules(have []string, c Chain) bool {
	// The first line is the chain's own "-N NAME".
	if len(have) != len(c.Rules)+1 {
		return false
	}
	for i, r := range c.Rules {
		if !slices.Equal(normalize(strings.Fields(have[i+1])[2:]), normalize(r)) {
			return false
		}
	}
	return true
}

// normalize drops quoting iptables adds around comments.
func normalize(spec []string) []string {
	out := make([]string, 0, len(spec))
	joined := strings.ReplaceAll(strings.Join(spec, " "), `"`, "")
	out = append(out, strings.Fields(joined)...)
	return out
}

// Cleanup removes weft's jumps and chains from both tables.
func (k *IPTablesKeeper) Cleanup() error {
	var errs []error
	for _, c := range []Chain{MasqChainFor(netip.Prefix{}, netip.Prefix{}, netip.Prefix{}, false),
		ForwardChainFor(netip.Prefix{}),
		StrictChainFor(netip.Prefix{}, netip.Prefix{}, netip.Prefix{}), MSSChainFor(false, 0)} {
		if ok, _ := k.ipt.Exists(c.Table, c.From, c.Jump...); ok {
			errs = append(errs, k.ipt.Delete(c.Table, c.From, c.Jump...))
		}
		if ok, _ := k.ipt.ChainExists(c.Table, c.Name); ok {
			errs = append(errs, k.ipt.ClearAndDeleteChain(c.Table, c.Name))
		}
	}
	return errors.Join(errs...)
}

// CleanupIPTables removes weft's chains and their jumps from iptables and
// ip6tables (each where the tool is installed) and says what it removed:
// `weftctl cleanup`, and weftd starting in nftables mode.
func CleanupIPTables() (removed []string, err error) {
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		tool := map[iptables.Protocol]string{iptables.ProtocolIPv4: "iptables", iptables.ProtocolIPv6: "ip6tables"}[proto]
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			continue // no such tool: none of its chains either
		}
		var had []string
		for _, c := range []struct{ table, name string }{{"nat", MasqChain}, {"filter", ForwardChain},
			{"mangle", StrictChain}, {"mangle", MSSChain}} {
			if ok, _ := ipt.ChainExists(c.table, c.name); ok {
				had = append(had, c.name)
			}
		}
		k := NewIPTablesKeeperWith(ipt, Settings{}, slog.New(slog.DiscardHandler))
		if err := k.Cleanup(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", tool, err))
			continue
		}
		if len(had) > 0 {
			removed = append(removed, tool+" chains "+strings.Join(had, " and "))
		}
	}
	return removed, errors.Join(errs...)
}
