package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/cmd/internal/status"
)

// get fetches a path from weftd's health endpoint.
func get(ctx context.Context, base, path string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("asking weftd at %s (is it running? see -healthz-ip/-healthz-port): %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return body, resp.StatusCode, err
}

// runStatus prints what weftd on this host is doing.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("healthz", "http://127.0.0.1:8471", "weftd's health endpoint")
	format := fs.String("o", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, _, err := get(ctx, *base, "/status")
	if err != nil {
		return err
	}
	if *format == "json" {
		_, err = stdout.Write(body)
		return err
	}
	var s status.Document
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("weftd's /status: %w", err)
	}
	state := "NOT READY"
	if s.Ready {
		state = "ready"
	}
	fmt.Fprintf(stdout, "weftd %s  backend %s  subnet %s  public ip %s  network %s\n", state, s.Backend, s.Subnet,
		s.PublicIP, s.Network)
	if s.IPv6Subnet != "" {
		fmt.Fprintf(stdout, "ipv6: subnet %s  public ip %s  network %s\n", s.IPv6Subnet, s.PublicIPv6, s.IPv6Network)
	}
	fmt.Fprintf(stdout, "reconciles %d, errors %d", s.Reconciles, s.Errors)
	if s.LastError != "" {
		fmt.Fprintf(stdout, " (last: %s)", s.LastError)
	}
	fmt.Fprintf(stdout, "\niptables: masquerade %v, forward %v\n", s.Rules["masquerade"], s.Rules["forward"])
	if st := s.Strict; st != nil {
		fmt.Fprintf(stdout, "strict encryption: on; %d packets to other hosts' subnets dropped (they would have left "+
			"unencrypted)\n", st.Dropped)
	}
	if od := s.OnDemand; od != nil {
		fmt.Fprintf(stdout, "wireguard peers on demand: %d known, %d configured, %d idle; %d added for traffic, %d "+
			"capped, %d removed idle; %d refused and %d removed for want of proof\n",
			od.Known, od.Configured, od.Known-od.Configured, od.Added, od.Capped, od.Idled, od.Refused, od.Expired)
		if od.Forged+od.Replayed > 0 {
			fmt.Fprintf(stdout, "wireguard handshake initiations refused: %d failed their proof, %d replayed\n", od.Forged, od.Replayed)
		}
		if od.NATNotEager > 0 {
			fmt.Fprintf(stdout, "wireguard peers behind NAT beyond the eager bound: %d (configured for traffic only)\n",
				od.NATNotEager)
		}
	}
	if s.LeaseConflicts > 0 {
		fmt.Fprintf(stdout, "this host's lease was overwritten by another writer %d times (taken back each time): check who can "+
			"write etcd\n", s.LeaseConflicts)
	}
	if s.LeaseContested {
		fmt.Fprintln(stdout, "this host's lease keeps being overwritten: the next take-back waits (up to 30 s); until then other hosts may follow the other writer's lease")
	}
	if s.ConfigNotFollowed != "" {
		fmt.Fprintf(stdout, "NOT FOLLOWING THE NETWORK CONFIG: %s\n", printable(s.ConfigNotFollowed))
	}
	if m := s.Membership; m != nil {
		cert := "none"
		if m.Certificate != "" {
			cert = fmt.Sprintf("%s (until %s)", printable(m.Certificate), printable(m.NotAfter))
		}
		fmt.Fprintf(stdout, "membership: %s; this host's certificate: %s; refused: %d\n", printable(m.Mode), cert, m.Refused)
		if m.Note != "" {
			fmt.Fprintf(stdout, "membership: %s\n", printable(m.Note))
		}
	}
	if r := s.Relay; r != nil {
		var pairs []string
		for _, p := range r.Pairs {
			pair := fmt.Sprintf("%s/%s on port %d", p.Ends[0], p.Ends[1], p.Port)
			if p.TryDirect {
				pair += " (trying direct)"
			}
			pairs = append(pairs, pair)
		}
		fmt.Fprintf(stdout, "relay (forwards ciphertext only): %d pairs [%s]; %d datagrams (%d bytes) forwarded; dropped: %d "+
			"not WireGuard, %d from or to an unknown end, %d over the rate bound\n", len(r.Pairs), strings.Join(pairs, ", "),
			r.Forwarded, r.ForwardedBytes, r.NotWireGuard, r.UnknownEnd, r.OverRate)
	}
	for reason, n := range s.Drops {
		fmt.Fprintf(stdout, "udp dropped (%s): %d\n", reason, n)
	}
	for _, source := range slices.Sorted(maps.Keys(s.TunnelDrops)) {
		fmt.Fprintf(stdout, "tunnel packets dropped from %s (holds no lease): %d\n", printable(source), s.TunnelDrops[source])
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPEER\tSUBNET\tPUBLIC IP\tPATH\tENCRYPTED\tSTATE")
	for _, p := range s.Peers {
		encrypted := "yes"
		if !p.Encrypted {
			encrypted = "NO (" + printable(p.InClear) + ")"
		}
		path := p.Path
		if p.Via != "" {
			path += " (" + printable(p.Via) + " to " + printable(p.Endpoint) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Lease, joinFamilies(p.Subnet, p.IPv6Subnet),
			joinFamilies(p.PublicIP, p.PublicIPv6),
			path, encrypted, p.State)
	}
	for _, sk := range s.Skipped {
		fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tSKIPPED: %s\n", sk.Key, sk.Reason)
	}
	return tw.Flush()
}

// joinFamilies shows a value of each family in one column: "v4, v6", or
// v4 alone when there is no IPv6 half.
func joinFamilies(v4, v6 string) string {
	if v6 == "" {
		return v4
	}
	return v4 + ", " + v6
}

// runReady exits 0 when weftd has programmed the data path (healthchecks).
func runReady(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ready", flag.ContinueOnError)
	fs.SetOutput(stderr)
	base := fs.String("healthz", "http://127.0.0.1:8471", "weftd's health endpoint")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body, code, err := get(ctx, *base, "/readyz")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("weftd is not ready: %s", body)
	}
	_, err = stdout.Write(body)
	return err
}
