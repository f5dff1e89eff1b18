package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/lease"
)

// runPeer is `weftctl peer add|rm|list`: outside peers, machines that
// join the overlay as WireGuard peers of every host (stored at
// <prefix>/peers/NAME; the network config's PeersNetwork gives them
// addresses).
func runPeer(ctx context.Context, args []string, opts lease.EtcdOptions, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("peer: want add NAME -public-key KEY [-endpoint IP:PORT] [-keepalive S], rm NAME, or list")
	}
	switch args[0] {
	case "list":
		return withStore(opts, func(s *lease.EtcdStore) error {
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
		return withStore(opts, func(s *lease.EtcdStore) error {
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
		return withStore(opts, func(s *lease.EtcdStore) error {
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
			if err := s.AddPeer(ctx, p); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "added outside peer %s at %s; its configuration: weftctl showconf %s\n", p.Name, p.Address, p.Name)
			return nil
		})
	}
	return fmt.Errorf("peer %s: want add, rm or list", args[0])
}

// configAndPeers reads and parses the network config from etcd, and the
// outside peers (those that decode).
func configAndPeers(ctx context.Context, s *lease.EtcdStore) (*lease.Config, []lease.OutsidePeer, error) {
	raw, err := s.Config(ctx)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := lease.ParseConfig(raw)
	if err != nil {
		return nil, nil, err
	}
	peers, _, err := s.Peers(ctx)
	return cfg, peers, err
}

// runShowconf is `weftctl showconf NAME`: a wg-quick file for an outside
// peer, with every weft host as a peer (its subnet as AllowedIPs: together
// the Network). The private key is the machine's own; weft never has it.
func runShowconf(ctx context.Context, name string, opts lease.EtcdOptions, stdout io.Writer) error {
	return withStore(opts, func(s *lease.EtcdStore) error {
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
		wgOpts, err := wireguard.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			return err
		}
		records, _, err := s.List(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "# wg-quick configuration of outside peer %s of the weft network %s (weftctl showconf)\n", name, cfg.Network)
		fmt.Fprintf(stdout, "[Interface]\nAddress = %s\nPrivateKey = <the private key of %s; weft has only its public key>\n", me.Address, name)
		for _, r := range records {
			l, err := lease.DecodeLease(r.Key, r.Value)
			if err != nil || l.Attrs.Backend() != lease.BackendWireGuard || !cfg.Fits(l.Subnet) {
				continue
			}
			var data wireguard.BackendData
			if json.Unmarshal(l.Attrs.BackendData, &data) != nil || data.PublicKey == "" {
				continue
			}
			fmt.Fprintf(stdout, "\n[Peer]\n# host %s, lease %s\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s\n",
				l.Attrs.PublicIP, r.Key, data.PublicKey, netip.AddrPortFrom(l.Attrs.PublicIP, uint16(data.Port)), l.Subnet)
			if wgOpts.PSK != nil {
				fmt.Fprintf(stdout, "PresharedKey = %s\n", wgOpts.PSK)
			}
			if me.Keepalive > 0 {
				fmt.Fprintf(stdout, "PersistentKeepalive = %d\n", me.Keepalive)
			}
		}
		return nil
	})
}
