package lease_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
)

// fastRetry keeps the start-up waits short in tests.
var fastRetry = lease.StartupRetry{First: 10 * time.Millisecond, Max: 40 * time.Millisecond}

// TestWaitForConfig walks a host through what it meets at start: no
// config, a broken one, one the caller's check refuses, the store down,
// and finally a good config, which it returns. Each wait says what it
// waits for.
func TestWaitForConfig(t *testing.T) {
	store := leasetest.New(nil)
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	refuse := errors.New("refused by the check")
	got := make(chan *lease.Config, 1)
	go func() {
		cfg, err := lease.WaitForConfig(ctx, store, "/coreos.com/network/config", fastRetry, testLogger(&logs), func(cfg *lease.Config) error {
			if cfg.Network.Bits() == 8 {
				return errors.Join(lease.ErrInvalidConfig, refuse)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		got <- cfg
	}()
	steps := []struct {
		do      func()
		logLine string
	}{
		{func() {}, "waiting for the network config"},
		{func() { store.PutConfig(ctx, []byte(`{"Network":`)) }, "not valid JSON"},
		{func() { store.PutConfig(ctx, []byte(`{"Network":"10.0.0.0/8"}`)) }, "refused by the check"},
		{func() { store.SetDown(true) }, "waiting for etcd"},
	}
	for _, s := range steps {
		s.do()
		waitFor(t, "log line "+s.logLine, func() bool { return strings.Contains(logs.String(), s.logLine) })
	}
	select {
	case cfg := <-got:
		t.Fatalf("returned %v before the config was good", cfg)
	default:
	}
	store.SetDown(false)
	store.PutConfig(ctx, []byte(`{"Network":"10.5.0.0/16"}`))
	select {
	case cfg := <-got:
		if cfg == nil || cfg.Network != netip.MustParsePrefix("10.5.0.0/16") || !cfg.BackendDefaulted {
			t.Fatalf("config = %+v", cfg)
		}
	case <-ctx.Done():
		t.Fatalf("never returned:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `no Backend.Type; using \"udp\"`) {
		t.Errorf("no warning about the defaulted backend:\n%s", logs.String())
	}
}

// TestWaitForConfigStopsWithContext: a stop while waiting is a clean return.
func TestWaitForConfigStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	var logs syncBuffer
	_, err := lease.WaitForConfig(ctx, leasetest.New(nil), "k", fastRetry, testLogger(&logs), func(*lease.Config) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// TestClaimWithRetry: with the store down the claim is retried (and said
// so) until the store is back; then the host gets its previous subnet.
func TestClaimWithRetry(t *testing.T) {
	store := leasetest.New(nil)
	store.SetDown(true)
	var logs syncBuffer
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	previous := netip.MustParsePrefix("10.5.77.0/24")
	time.AfterFunc(100*time.Millisecond, func() { store.SetDown(false) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := lease.ClaimWithRetry(ctx, store, lease.ClaimRequest{Config: cfg, Attrs: hostAttrs(1), Previous: previous, TTL: time.Hour}, fastRetry, testLogger(&logs))
	if err != nil || l.Subnet != previous {
		t.Fatalf("claim = %v, %v; want %s", l.Subnet, err, previous)
	}
	if !strings.Contains(logs.String(), "cannot lease a subnet yet; retrying") {
		t.Errorf("no retry logged:\n%s", logs.String())
	}
}

// TestPreviousSubnet reads the subnet of an earlier run from the subnet
// file, unless it is missing, holds no usable subnet or no longer fits the
// config; another line that does not parse costs nothing.
func TestPreviousSubnet(t *testing.T) {
	dir := t.TempDir()
	cfg := mustConfig(t, `{"Network":"10.5.0.0/16"}`)
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	env := func(subnet string) string {
		return "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=" + subnet + "\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
	}
	cases := []struct {
		name, path, want, log string
	}{
		{"fits", write("ok.env", env("10.5.34.1/24")), "10.5.34.0/24", ""},
		{"missing", filepath.Join(dir, "none.env"), "invalid Prefix", ""},
		{"garbage", write("bad.env", "FLANNEL_SUBNET=banana\n"), "invalid Prefix", "skipped what it cannot use"},
		{"a bad line beside", write("mixed.env", env("10.5.35.1/24")+"FLANNEL_MTU=banana\n"), "10.5.35.0/24", ""},
		{"another network", write("other.env", env("10.9.1.1/24")), "invalid Prefix", "does not fit the network config"},
	}
	for _, c := range cases {
		var logs syncBuffer
		if got := lease.PreviousSubnet(c.path, cfg, testLogger(&logs)).String(); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
		if c.log != "" && !strings.Contains(logs.String(), c.log) {
			t.Errorf("%s: log lacks %q:\n%s", c.name, c.log, logs.String())
		}
	}
	// The IPv6 half, on a dual-stack network only.
	dual := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00:5::/48"}`)
	path := write("dual.env", env("10.5.34.1/24")+"FLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET=fc00:5:0:22::1/64\n")
	if got := lease.PreviousIPv6Subnet(path, dual).String(); got != "fc00:5:0:22::/64" {
		t.Errorf("previous IPv6 subnet = %s, want fc00:5:0:22::/64", got)
	}
	if got := lease.PreviousIPv6Subnet(path, cfg); got.IsValid() {
		t.Errorf("previous IPv6 subnet on an IPv4-only network = %s, want none", got)
	}
}

// TestReadPreviousSubnetsAsFlannel: the previous subnet is read as flannel
// v0.28 reads it (its main_test.go cases first): a CIDR that does not
// parse is skipped, a key left with two gives none, a key with none gives
// none; beyond flannel's cases, quotes and "export" as a shell file has
// them, and a line that is not KEY=value costs only that line.
func TestReadPreviousSubnetsAsFlannel(t *testing.T) {
	for _, tt := range []struct {
		file        string
		subnet, six string
		problems    int
	}{
		{"FLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24\n", "", "", 2},
		{"FLANNEL_IPV6_SUBNET=fd00::/64,not-a-cidr,fd01::/64\n", "", "", 2},
		{"FLANNEL_SUBNET=not-a-cidr\n", "", "", 1},
		{"FLANNEL_IPV6_SUBNET=not-a-cidr\n", "", "", 1},
		{"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24,junk\nFLANNEL_MTU=oops\n", "10.244.1.0/24", "", 1},
		{"# written by weft\nexport FLANNEL_SUBNET=\"10.244.3.1/24\"\nthis line is broken\nFLANNEL_IPV6_SUBNET='fd00:0:0:3::1/64'\n", "10.244.3.0/24", "fd00:0:0:3::/64", 1},
		{"FLANNEL_SUBNET=fd00::/64\nFLANNEL_IPV6_SUBNET=10.244.1.0/24\n", "", "", 2},
	} {
		path := filepath.Join(t.TempDir(), "subnet.env")
		if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := lease.ReadPreviousSubnets(path)
		if err != nil || fmt.Sprint(got.Subnet) != fmt.Sprint(prefixOrZero(tt.subnet)) || fmt.Sprint(got.IPv6Subnet) != fmt.Sprint(prefixOrZero(tt.six)) || len(got.Problems) != tt.problems {
			t.Errorf("%q: %v %v %v %v, want %q %q and %d problems", tt.file, got.Subnet, got.IPv6Subnet, got.Problems, err, tt.subnet, tt.six, tt.problems)
		}
	}
	if _, err := lease.ReadPreviousSubnets(filepath.Join(t.TempDir(), "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
}

func prefixOrZero(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}
