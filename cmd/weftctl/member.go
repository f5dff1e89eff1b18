package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weftnet/weft/cmd/internal/status"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/membership"
)

// Signed membership from the operator's side: `ca create` makes the CA
// (keep its key offline: it never goes to etcd), `member request` prints
// what a host asks to be certified for, `member sign` certifies it and
// stores the certificate where the host finds it, `member revoke` adds to
// the CA-signed revocation list; `config put -ca` and `peer add -ca` seal
// what hosts in enforce mode require sealed.

// runCA is `weftctl ca create DIR`.
func runCA(args []string, stdout io.Writer) error {
	if len(args) != 2 || args[0] != "create" {
		return errors.New("ca: want create DIR (writes DIR/ca.key, to keep offline, and DIR/ca.pub, for -membership-ca)")
	}
	keyPath, pubPath := filepath.Join(args[1], "ca.key"), filepath.Join(args[1], "ca.pub")
	ca, err := keys.CreateCA(keyPath)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pubPath, []byte(ca.Public().String()+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "CA public key %s\nprivate key in %s: keep it offline, never in etcd\n"+
		"copy %s to every host and start weftd with -membership-ca %s\n", ca.Public(), keyPath, pubPath, pubPath)
	return nil
}

// request is what a host asks to be certified for: one line, printed on
// the host by `member request`, read by `member sign`.
type request struct {
	host       keys.HostID
	identity   keys.IdentityKey
	subnet     netip.Prefix
	ipv6Subnet netip.Prefix
}

func (r request) String() string {
	return fmt.Sprintf("weft-request host %s identity %s subnet %s ipv6subnet %s", r.host, r.identity,
		prefixText(r.subnet), prefixText(r.ipv6Subnet))
}

func prefixText(p netip.Prefix) string {
	if !p.IsValid() {
		return "-"
	}
	return p.String()
}

// parseRequest reads a request line.
func parseRequest(text string) (request, error) {
	f := strings.Fields(text)
	if len(f) != 9 || f[0] != "weft-request" || f[1] != "host" || f[3] != "identity" || f[5] != "subnet" || f[7] != "ipv6subnet" {
		return request{}, errors.New("not a request line (weft-request host ID identity KEY subnet S ipv6subnet S), as `weftctl member request` prints it")
	}
	var r request
	var err error
	if r.host, err = keys.ParseHostID(f[2]); err != nil {
		return request{}, err
	}
	if r.identity, err = keys.ParseIdentityKey(f[4]); err != nil {
		return request{}, err
	}
	for i, dst := range []*netip.Prefix{&r.subnet, &r.ipv6Subnet} {
		if v := f[6+2*i]; v != "-" {
			if *dst, err = netip.ParsePrefix(v); err != nil || dst.Masked() != *dst {
				return request{}, fmt.Errorf("%s %q is not a subnet", f[5+2*i], v)
			}
		}
	}
	if !r.subnet.IsValid() && !r.ipv6Subnet.IsValid() {
		return request{}, errors.New("the request names no subnet")
	}
	return r, nil
}

// runMember is `weftctl member request|sign|revoke`.
func runMember(ctx context.Context, args []string, opts etcdstore.Options, keyFile string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("member: want request, sign -ca KEY REQUEST, or revoke -ca KEY (-cert SERIAL | -identity KEY)")
	}
	fs := flag.NewFlagSet("member "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	caFile := fs.String("ca", "", "the CA's private key file (from `weftctl ca create`)")
	healthz := fs.String("healthz", "http://127.0.0.1:8471", "weftd's health endpoint (request: this host's subnet)")
	valid := fs.Duration("valid", 365*24*time.Hour, "how long the certificate is valid (sign)")
	certSerial := fs.String("cert", "", "the serial of a certificate to revoke")
	identity := fs.String("identity", "", "an identity key to revoke (every certificate of it)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "request":
		return printRequest(ctx, keyFile, *healthz, stdout)
	case "sign":
		if fs.NArg() == 0 {
			return errors.New("member sign: want the request line (quoted) after the flags")
		}
		ca, err := keys.LoadCA(*caFile)
		if err != nil {
			return err
		}
		r, err := parseRequest(strings.Join(fs.Args(), " "))
		if err != nil {
			return err
		}
		now := time.Now()
		c, err := lease.SealCertificate(ca, lease.Certificate{Serial: lease.NewSerial(), HostID: r.host, Identity: r.identity,
			Subnet: r.subnet, IPv6Subnet: r.ipv6Subnet, NotBefore: now.Add(-time.Minute), NotAfter: now.Add(*valid)})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "certifying host %s (identity %s) for subnet %s until %s, serial %s\n"+
			"check the host ID and identity with the host's operator (weftctl member request there)\n",
			c.HostID, c.Identity, joinFamilies(prefixText(c.Subnet), prefixText(c.IPv6Subnet)), c.NotAfter.UTC().Format(time.RFC3339), c.Serial)
		return withStore(opts, func(s *etcdstore.Store) error {
			if err := s.PutMembership(ctx, membership.CertName(c.HostID.String()), []byte(c.Text)); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "stored at %s/membership/%s; the host publishes it within seconds\n", s.Prefix(), membership.CertName(c.HostID.String()))
			return nil
		})
	case "revoke":
		ca, err := keys.LoadCA(*caFile)
		if err != nil {
			return err
		}
		return withStore(opts, func(s *etcdstore.Store) error { return revoke(ctx, s, ca, *certSerial, *identity, stdout) })
	}
	return fmt.Errorf("member %s: want request, sign or revoke", args[0])
}

// printRequest prints this host's request: its host ID and identity (from
// beside the key file) and its subnets (from weftd).
func printRequest(ctx context.Context, keyFile, healthz string, stdout io.Writer) error {
	var r request
	hostText, err := os.ReadFile(keys.HostIDPath(keyFile))
	if err != nil {
		return fmt.Errorf("this host's ID (start weftd once first): %w", err)
	}
	if r.host, err = keys.ParseHostID(strings.TrimSpace(string(hostText))); err != nil {
		return err
	}
	id, err := keys.LoadIdentity(keys.IdentityPath(keyFile))
	if err != nil {
		return fmt.Errorf("this host's identity (start weftd once first): %w", err)
	}
	r.identity = id.Public()
	body, _, err := get(ctx, healthz, "/status")
	if err != nil {
		return err
	}
	var s status.Document
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("weftd's status: %w", err)
	}
	r.subnet, _ = netip.ParsePrefix(s.Subnet)
	r.ipv6Subnet, _ = netip.ParsePrefix(s.IPv6Subnet)
	if !r.subnet.IsValid() && !r.ipv6Subnet.IsValid() {
		return errors.New("weftd holds no subnet yet; try again once it has leased one")
	}
	fmt.Fprintln(stdout, r)
	return nil
}

// revoke adds a certificate serial or an identity to the revocation list
// in etcd, under the next serial.
func revoke(ctx context.Context, s *etcdstore.Store, ca keys.Identity, cert, identity string, stdout io.Writer) error {
	list := membership.Revocations{}
	if text, ok, err := s.Membership(ctx, membership.RevocationsName); err != nil {
		return err
	} else if ok {
		if list, err = membership.ParseRevocations(text); err != nil || list.CA != ca.Public() {
			return fmt.Errorf("the revocation list in etcd is not this CA's (%v): remove it or use its CA", err)
		}
	}
	switch {
	case cert != "":
		list.Certs = append(list.Certs, cert)
	case identity != "":
		id, err := keys.ParseIdentityKey(identity)
		if err != nil {
			return err
		}
		list.Identities = append(list.Identities, id)
	default:
		return errors.New("member revoke: want -cert SERIAL or -identity KEY")
	}
	list.Serial++
	list.Issued = time.Now()
	text, err := list.Seal(ca)
	if err != nil {
		return err
	}
	if _, err := membership.ParseRevocations(text); err != nil {
		return err
	}
	if err := s.PutMembership(ctx, membership.RevocationsName, text); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revocation list %d stored: %d certificates, %d identities revoked; hosts take it within seconds\n",
		list.Serial, len(list.Certs), len(list.Identities))
	return nil
}

// sealConfig seals raw as the network config under the next serial and
// stores the seal (before the config, so a host woken by the config's
// write finds its seal).
func sealConfig(ctx context.Context, s *etcdstore.Store, caFile string, raw []byte) error {
	ca, err := keys.LoadCA(caFile)
	if err != nil {
		return err
	}
	serial := uint64(1)
	if text, ok, err := s.Membership(ctx, membership.ConfigSealName); err != nil {
		return err
	} else if ok {
		if old, err := membership.ParseConfigSeal(text); err == nil {
			serial = old.Serial + 1
		}
	}
	seal, err := membership.SealConfig(ca, raw, serial)
	if err != nil {
		return err
	}
	return s.PutMembership(ctx, membership.ConfigSealName, seal)
}
