package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/membership"
	"github.com/weftnet/weft/mesh"
)

// runPeer is `weftctl peer add|rm|list`: outside peers, machines that
// join the overlay as WireGuard peers of every host (stored at
// <prefix>/peers/NAME; the network config's PeersNetwork gives them
// addresses).
func runPeer(ctx context.Context, args []string, opts etcdstore.Options, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("peer: want add NAME -public-key KEY [-endpoint IP:PORT] [-keepalive S], rm NAME, or list")
	}
	switch args[0] {
	case "list":
		return withStore(opts, func(s *etcdstore.Store) error {
			peers, bad, err := s.Peers(ctx)
			for _, p := range peers {
				endpoint := "-"
				if p.Endpoint.IsValid() {
					endpoint = p.Endpoint.String()
				}
				fmt.Fprintf(stdout, "%s\t%s\t%s\t%s\n", printable(p.Name), p.Address, printable(p.PublicKey), endpoint)
			}
			for _, b := range bad {
				fmt.Fprintln(stdout, "INVALID:", printable(b.Error()))
			}
			return err
		})
	case "rm":
		if len(args) != 2 {
			return errors.New("peer rm: want a NAME")
		}
		return withStore(opts, func(s *etcdstore.Store) error {
			found, err := s.RemovePeer(ctx, args[1])
			if err == nil && !found {
				return fmt.Errorf("no outside peer %q (weftctl peer list)", args[1])
			}
			if err == nil {
				fmt.Fprintf(stdout, "removed outside peer %s; hosts drop it within seconds\n", args[1])
			}
			return err
		})
	case "add":
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			return errors.New("peer add: want a NAME first: weftctl peer add NAME -public-key KEY")
		}
		fs := flag.NewFlagSet("peer add", flag.ContinueOnError)
		fs.SetOutput(stderr)
		pub := fs.String("public-key", "", "the machine's WireGuard public key (wg pubkey < its private key)")
		endpoint := fs.String("endpoint", "", "IP:PORT where hosts reach the machine (none: it reaches them first)")
		keepalive := fs.Int("keepalive", 0, "keepalive hosts send it, seconds (0: none)")
		caFile := fs.String("ca", "", "the membership CA's private key file: seal the peer, as enforce-mode hosts require")
		if err := fs.Parse(args[2:]); err != nil {
			return err
		}
		p := lease.OutsidePeer{Name: args[1], PublicKey: *pub, Keepalive: *keepalive}
		if *endpoint != "" {
			ep, err := netip.ParseAddrPort(*endpoint)
			if err != nil {
				return fmt.Errorf("-endpoint %q is not IP:PORT", *endpoint)
			}
			p.Endpoint = ep
		}
		return withStore(opts, func(s *etcdstore.Store) error {
			cfg, peers, err := configAndPeers(ctx, s)
			if err != nil {
				return err
			}
			if p.Address, err = lease.FreePeerAddress(cfg, peers); err != nil && cfg.PeersNetwork.IsValid() {
				return err
			}
			if err := p.Check(cfg); err != nil {
				return err
			}
			if *caFile != "" {
				ca, err := keys.LoadCA(*caFile)
				if err != nil {
					return err
				}
				if p.Seal, err = membership.SealPeer(ca, p); err != nil {
					return err
				}
			}
			if err := s.AddPeer(ctx, p); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "added outside peer %s at %s; its configuration: weftctl showconf %s\n", p.Name, p.Address,
				p.Name)
			return nil
		})
	}
	return fmt.Errorf("peer %s: want add, rm or list", args[0])
}

// configAndPeers reads and parses the network config from etcd, and the
// outside peers (those that decode).
func configAndPeers(ctx context.Context, s *etcdstore.Store) (*lease.Config, []lease.OutsidePeer, error) {
	raw, err := s.Config(ctx)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := backends.ParseConfig(raw)
	if err != nil {
		return nil, nil, err
	}
	peers, _, err := s.Peers(ctx)
	return cfg, peers, err
}

// runShowconf is `weftctl showconf NAME`: a wg-quick file for an outside
// peer, with every weft host as a peer (its subnet as AllowedIPs: together
// the Network). The private key is the machine's own; weft never has it.
// Every lease passes the checks weftd applies (mesh.Compute, then the
// wireguard plan: a valid key, a port in range, one lease per key), and
// every line is printed from the parsed values, never from the record:
// wg-quick runs PreUp and PostUp lines as root, so one line copied from
// etcd would hand an etcd writer the outside machine. A skipped lease is
// named on stderr.
func runShowconf(ctx context.Context, name string, opts etcdstore.Options, stdout, stderr io.Writer) error {
	return withStore(opts, func(s *etcdstore.Store) error {
		cfg, peers, err := configAndPeers(ctx, s)
		if err != nil {
			return err
		}
		var me *lease.OutsidePeer
		for i := range peers {
			if peers[i].Name == name {
				me = &peers[i]
			}
		}
		if me == nil {
			return fmt.Errorf("no outside peer %q (weftctl peer add %s -public-key KEY)", name, name)
		}
		if err := me.Check(cfg); err != nil {
			return fmt.Errorf("%v; fix it with weftctl peer rm %s and weftctl peer add", err, name)
		}
		myKey, err := keys.ParseKey(me.PublicKey)
		if err != nil {
			return err
		}
		wgOpts, err := wireguard.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			return err
		}
		// The outside machine reaches every host through WireGuard at its
		// IPv4 address (PeersNetwork is IPv4): no direct routes, one
		// device per family.
		wgOpts.DirectRouting, wgOpts.Mode = false, wireguard.ModeSeparate
		records, _, err := s.List(ctx)
		if err != nil {
			return err
		}
		var leases []lease.Lease
		for _, r := range records {
			l, err := lease.DecodeLease(r.Key, r.Value)
			if err != nil {
				fmt.Fprintln(stderr, "weftctl: skipping:", printable(err.Error()))
				continue
			}
			l.Revision, l.CreateRevision = r.Revision, r.CreateRevision
			leases = append(leases, l)
		}
		// The outside machine holds no lease: a self with no subnet and no
		// address is no lease's own.
		d := mesh.Compute(lease.Lease{}, leases, cfg)
		for _, skip := range d.Skipped {
			fmt.Fprintf(stderr, "weftctl: skipping lease %s: %s\n", printable(skip.Key), printable(skip.Reason))
		}
		specs, problems := wireguard.Plan(d, myKey, wgOpts)
		for _, p := range problems {
			fmt.Fprintln(stderr, "weftctl: skipping:", printable(p.Error()))
		}
		writeWGQuick(stdout, name, cfg, *me, specs, wgOpts.PSK)
		return nil
	})
}

// writeWGQuick prints the wg-quick file of outside peer name (me) with
// specs as its peers, from typed values only: keys in wg's base64,
// addresses and endpoints as netip prints them, the keepalive checked.
func writeWGQuick(w io.Writer, name string, cfg *lease.Config, me lease.OutsidePeer, specs []wireguard.PeerSpec,
	psk *keys.Key) {
	fmt.Fprintf(w, "# wg-quick configuration of outside peer %s of the weft network %s (weftctl showconf)\n", name,
		cfg.Network)
	if psk != nil {
		fmt.Fprintln(w, "# It holds the cluster's pre-shared key (Backend.PSK): keep it as secret as a private key.")
	}
	fmt.Fprintf(w, "[Interface]\nAddress = %s\nPrivateKey = <the private key of %s; weft has only its public key>\n",
		me.Address, name)
	for _, spec := range specs {
		fmt.Fprintf(w, "\n[Peer]\n# host %s, lease %s\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s\n",
			spec.Endpoint.Addr(), spec.Lease, spec.PublicKey, spec.Endpoint, joinPrefixes(spec.AllowedIPs))
		if psk != nil {
			fmt.Fprintf(w, "PresharedKey = %s\n", psk)
		}
		if me.Keepalive > 0 {
			fmt.Fprintf(w, "PersistentKeepalive = %d\n", me.Keepalive)
		}
	}
}

// joinPrefixes is prefixes as wg-quick lists them: "a, b".
func joinPrefixes(prefixes []netip.Prefix) string {
	texts := make([]string, len(prefixes))
	for i, p := range prefixes {
		texts[i] = p.String()
	}
	return strings.Join(texts, ", ")
}
