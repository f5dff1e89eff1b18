// Command weftctl is the operator's CLI for weft: it reads and writes the
// network config and lists the leases in etcd.
//
//	weftctl [etcd flags] config get [-o raw]|put FILE|validate FILE
//	weftctl [etcd flags] leases [-o json]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/mesh"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: weftctl [flags] COMMAND
commands:
  config get [-o raw]     print the network config stored in etcd (escaped; -o raw: its exact bytes)
  config put [-ca KEY] FILE
                          validate FILE (- for stdin) and store it as the network config
                          (-ca: sealed by the membership CA, as enforce-mode hosts require)
  config seal -ca KEY     seal the stored network config with the membership CA
  config validate FILE    check FILE with the same rules weftd applies
  leases [-o json]        list every subnet lease
  docker-opts [-f F -d F -k KEY -c -i -m -format env|daemon-json]
                          write docker's options from the subnet file, as mk-docker-opts.sh
  status [-o json] [-healthz URL]
                          this host's lease, backend, peers (handshakes), rules and readiness
  ready [-healthz URL]    exit 0 when weftd is ready (for healthchecks)
  cleanup [-release] [-flannel] [-subnet-file F]
                          remove every device, route, rule and file weft made on this host
                          (stop weftd first); -release also deletes its lease in etcd;
                          -flannel removes what flanneld left instead (moving a host to weft)
  peer add NAME -public-key KEY [-endpoint IP:PORT] [-keepalive S]
                          join a machine that is not a weft host as a WireGuard peer of
                          every host, with an address of the config's PeersNetwork
                          [-ca KEY: sealed by the membership CA, as enforce-mode hosts require]
  peer rm NAME | peer list
  ca create DIR           make a membership CA: DIR/ca.key (keep offline), DIR/ca.pub (-membership-ca)
  member request          print this host's certification request (host ID, identity, subnet)
  member sign -ca KEY [-valid D] REQUEST
                          certify a host's request and store the certificate where the host finds it
  member revoke -ca KEY -cert SERIAL | -identity KEY
                          add to the CA-signed revocation list
  showconf NAME           print a wg-quick file for outside peer NAME (every host a peer)
  keys show               print this host's WireGuard public key (never the private one)
  keys rotate             make a new WireGuard key; weftd adopts it within seconds and
                          republishes its lease, and every peer follows
flags:`

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("weftctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, usage); fs.PrintDefaults() }
	// The etcd flags default from the same environment as weftd's
	// (WEFTD_<FLAG>, then FLANNELD_<FLAG>), so weftctl on a host reaches
	// the etcd weftd uses, with the same credentials.
	var opts etcdstore.Options
	endpoints := fs.String("etcd-endpoints", etcdEnv("etcd-endpoints", "http://127.0.0.1:2379"),
		"comma-separated etcd endpoints")
	fs.StringVar(&opts.Prefix, "etcd-prefix", etcdEnv("etcd-prefix", etcdstore.DefaultPrefix), "etcd prefix")
	fs.StringVar(&opts.CAFile, "etcd-cafile", etcdEnv("etcd-cafile", ""), "CA file for etcd TLS")
	fs.StringVar(&opts.CertFile, "etcd-certfile", etcdEnv("etcd-certfile", ""), "client certificate for etcd")
	fs.StringVar(&opts.KeyFile, "etcd-keyfile", etcdEnv("etcd-keyfile", ""), "client key for etcd")
	fs.StringVar(&opts.Username, "etcd-username", etcdEnv("etcd-username", ""), "etcd user")
	fs.StringVar(&opts.Password, "etcd-password", etcdEnv("etcd-password", ""),
		"etcd password (visible in ps; prefer -etcd-password-file)")
	passwordFile := fs.String("etcd-password-file", etcdEnv("etcd-password-file", ""), "file holding the etcd password")
	keyFile := fs.String("wireguard-key-file", envOr("WIREGUARD_KEY_FILE", keys.DefaultPath), "WireGuard private key file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opts.Endpoints = strings.Split(*endpoints, ",")
	if err := opts.ReadPasswordFile(*passwordFile); err != nil {
		fmt.Fprintln(stderr, "weftctl:", err)
		return 2
	}
	if err := opts.CheckTLS(); err != nil {
		fmt.Fprintln(stderr, "weftctl:", err)
		return 2
	}
	if e := opts.PlaintextPassword(); e != "" {
		fmt.Fprintf(stderr, "weftctl: warning: the etcd password goes in clear to %s; "+
			"use https:// endpoints with -etcd-cafile\n", e)
	}
	cmd := fs.Args()
	if len(cmd) == 0 {
		fs.Usage()
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	switch {
	case cmd[0] == "config":
		err = runConfig(ctx, cmd[1:], opts, stdout, stderr)
	case cmd[0] == "status":
		err = runStatus(ctx, cmd[1:], stdout, stderr)
	case cmd[0] == "ready":
		err = runReady(ctx, cmd[1:], stdout, stderr)
	case cmd[0] == "cleanup":
		err = runCleanup(ctx, cmd[1:], opts, stdout, stderr)
	case cmd[0] == "docker-opts":
		err = runDockerOpts(cmd[1:], stdout, stderr)
	case len(cmd) == 2 && cmd[0] == "keys" && cmd[1] == "show":
		var k keys.Key
		if k, err = keys.Load(*keyFile); err == nil {
			fmt.Fprintln(stdout, k.Public())
		}
	case len(cmd) == 2 && cmd[0] == "keys" && cmd[1] == "rotate":
		var k keys.Key
		if k, err = keys.Rotate(*keyFile); err == nil {
			fmt.Fprintf(stdout, "new public key %s written to %s; weftd adopts it within seconds\n", k.Public(), *keyFile)
		}
	case cmd[0] == "ca":
		err = runCA(cmd[1:], stdout)
	case cmd[0] == "member":
		err = runMember(ctx, cmd[1:], opts, *keyFile, stdout, stderr)
	case cmd[0] == "peer":
		err = runPeer(ctx, cmd[1:], opts, stdout, stderr)
	case len(cmd) == 2 && cmd[0] == "showconf":
		err = runShowconf(ctx, cmd[1], opts, stdout, stderr)
	case len(cmd) >= 1 && cmd[0] == "leases":
		asJSON := len(cmd) == 3 && cmd[1] == "-o" && cmd[2] == "json"
		err = withStore(opts, func(s *etcdstore.Store) error { return printLeases(ctx, s, stdout, asJSON) })
	default:
		err = errUsage
	}
	if errors.Is(err, errUsage) {
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "weftctl:", err)
		return 1
	}
	return 0
}

// errUsage is what a command line no command matches gets: the usage.
var errUsage = errors.New("usage")

// runConfig is `weftctl config validate FILE | get | put FILE`: put and
// validate check the file as weftd would, and put writes nothing unless
// it is valid.
func runConfig(ctx context.Context, args []string, opts etcdstore.Options, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 2 && args[0] == "validate":
		_, notes, err := readConfigFile(args[1])
		if err == nil {
			fmt.Fprintln(stdout, "config is valid")
			for _, n := range notes {
				fmt.Fprintln(stdout, "note:", n)
			}
		}
		return err
	case len(args) == 1 && args[0] == "get", len(args) == 3 && args[0] == "get" && args[1] == "-o" && args[2] == "raw":
		return withStore(opts, func(s *etcdstore.Store) error {
			raw, err := s.Config(ctx)
			if err != nil {
				return err
			}
			if len(args) == 3 {
				_, err = stdout.Write(raw) // the exact bytes etcd holds
				return err
			}
			// Anyone who can write etcd wrote this: what a terminal would
			// act on (escape sequences) is shown escaped, as Go quotes it;
			// a valid config has none outside its line breaks.
			for line := range strings.Lines(strings.TrimSpace(string(raw))) {
				fmt.Fprintln(stdout, printable(strings.TrimSuffix(line, "\n")))
			}
			return nil
		})
	case len(args) == 3 && args[0] == "seal" && args[1] == "-ca":
		return withStore(opts, func(s *etcdstore.Store) error {
			raw, err := s.Config(ctx)
			if err != nil {
				return err
			}
			return sealConfig(ctx, s, args[2], raw)
		})
	case len(args) == 2 && args[0] == "put", len(args) == 4 && args[0] == "put" && args[1] == "-ca":
		raw, notes, err := readConfigFile(args[len(args)-1])
		if err != nil {
			return fmt.Errorf("%w; nothing was written to etcd", err)
		}
		for _, n := range notes {
			fmt.Fprintln(stderr, "weftctl: note:", n)
		}
		return withStore(opts, func(s *etcdstore.Store) error {
			if len(args) == 4 {
				if err := sealConfig(ctx, s, args[2], raw); err != nil {
					return err
				}
			}
			return s.PutConfig(ctx, raw)
		})
	}
	return errUsage
}

// etcdEnv is an etcd flag's default from the environment, as weftd reads
// it: WEFTD_<FLAG>, then FLANNELD_<FLAG>.
func etcdEnv(flagName, def string) string {
	env := strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
	return envOr("WEFTD_"+env, envOr("FLANNELD_"+env, def))
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func withStore(opts etcdstore.Options, f func(*etcdstore.Store) error) error {
	s, err := etcdstore.New(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	err = f(s)
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		if cause := s.Diagnose(context.Background()); cause != nil {
			return cause
		}
	}
	return err
}

// readConfigFile reads and validates a config file; "-" is stdin.
// readConfigFile reads and checks a network config file ("-": stdin); the
// notes say what weft reads differently from how it is written.
func readConfigFile(path string) ([]byte, []string, error) {
	var raw []byte
	var err error
	if path == "-" {
		raw, err = io.ReadAll(os.Stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, nil, err
	}
	cfg, err := backends.ParseConfig(raw)
	if err == nil {
		err = backends.ValidateOptions(cfg)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return raw, cfg.Notes, nil
}

// leaseRow is one line of `weftctl leases`.
type leaseRow struct {
	Subnet      string          `json:"subnet"`
	PublicIP    string          `json:"public_ip"`
	IPv6Subnet  string          `json:"ipv6_subnet,omitempty"`
	PublicIPv6  string          `json:"public_ipv6,omitempty"`
	BackendType string          `json:"backend"`
	BackendData json.RawMessage `json:"backend_data,omitempty"`
	ExpiresIn   string          `json:"expires_in"`
	// Signed says the lease is signed by the identity it names (a weft
	// host's); a flannel host's, or an older weft's, is unsigned.
	Signed bool `json:"signed"`
	// Cert is the serial of the membership certificate the lease
	// publishes (its signature checked, not whether its CA is trusted).
	Cert  string `json:"cert,omitempty"`
	Error string `json:"error,omitempty"`
	// Skipped says why weftd leaves this lease out (mesh.Check against the
	// network config); empty for a usable lease.
	Skipped string `json:"skipped,omitempty"`
}

func printLeases(ctx context.Context, s *etcdstore.Store, out io.Writer, asJSON bool) error {
	records, _, err := s.List(ctx)
	if err != nil {
		return err
	}
	var cfg *lease.Config
	if raw, err := s.Config(ctx); err == nil {
		cfg, _ = backends.ParseConfig(raw)
	}
	rows := make([]leaseRow, 0, len(records))
	for _, r := range records {
		row := leaseRow{Subnet: r.Key}
		if l, err := lease.DecodeLease(r.Key, r.Value); err != nil {
			row.Error = err.Error()
		} else {
			row.Subnet, row.PublicIP = l.Subnet.String(), l.Attrs.PublicIP.String()
			row.BackendType, row.BackendData, row.Signed = l.Attrs.Backend(), l.Attrs.BackendData, l.Signed
			if c := l.Attrs.Cert(); c != nil {
				row.Cert = c.Serial
			}
			if l.IPv6Subnet.IsValid() {
				row.IPv6Subnet = l.IPv6Subnet.String()
			}
			if l.Attrs.PublicIPv6 != nil {
				row.PublicIPv6 = l.Attrs.PublicIPv6.String()
			}
			if cfg != nil {
				row.Skipped = mesh.Check(l, cfg)
			}
		}
		if ttl, err := s.Expiry(ctx, r); err == nil {
			row.ExpiresIn = ttl.String()
		} else if errors.Is(err, lease.ErrLeaseLost) {
			row.ExpiresIn = "expired"
		}
		rows = append(rows, row)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return renderLeases(rows, out)
}

// renderLeases prints lease rows as a table. Every field may come from
// whoever can write etcd, so control characters (terminal escape
// sequences, C1 controls, tabs that would shift the columns) are shown
// escaped, never sent to the terminal.
func renderLeases(rows []leaseRow, out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tBACKEND\tBACKEND DATA\tSIGNED\tCERT\tEXPIRES IN")
	for _, r := range rows {
		data := string(r.BackendData)
		switch {
		case r.Error != "":
			data = "INVALID: " + r.Error
		case r.Skipped != "":
			data += " SKIPPED: " + r.Skipped
		}
		signed := map[bool]string{true: "yes", false: "no"}[r.Signed]
		if r.Error != "" {
			signed = "-"
		}
		cert := r.Cert
		if cert == "" {
			cert = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", printable(joinFamilies(r.Subnet, r.IPv6Subnet)),
			printable(joinFamilies(r.PublicIP, r.PublicIPv6)),
			printable(r.BackendType), printable(data), signed, cert, r.ExpiresIn)
	}
	return tw.Flush()
}

// printable escapes every rune a terminal could act on, as Go quotes it.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r == ' ' || (unicode.IsGraphic(r) && !unicode.IsControl(r)) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}
