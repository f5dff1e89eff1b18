package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// weftdBin and weftctlBin are built once for all cluster tests, and
// wireguardGoBin, the wireguard-go of the version weft embeds, for the
// peers the tests run by hand.
var weftdBin, weftctlBin, wireguardGoBin, weftCNIBin string

func TestMain(m *testing.M) {
	if RunRole() {
		return
	}
	if os.Geteuid() != 0 {
		fmt.Println("cluster tests need root; skipping")
		os.Exit(m.Run())
	}
	os.Exit(runLabTests(m))
}

// runLabTests builds (or finds) the binaries the lab runs, then the tests.
func runLabTests(m *testing.M) int {
	kernelWireGuard, kernelIPIP = KernelHasWireGuard(), KernelHasIPIP()
	if os.Getenv(ExpectKernelWireGuardEnv) != "" && (!kernelWireGuard || !kernelIPIP) {
		fmt.Printf("%s is set but this kernel cannot make a WireGuard link (%v) or an ipip link (%v): the kernel tests would not test the kernel\n",
			ExpectKernelWireGuardEnv, kernelWireGuard, kernelIPIP)
		return 1
	}
	// The VM tier runs this binary on a read-only copy of the machine
	// with weftd, weftctl and wireguard-go built beforehand (no Go
	// toolchain run under emulation).
	dir := os.Getenv(PrebuiltEnv)
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "weftlab-bin-"); err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
	}
	weftdBin, weftctlBin, wireguardGoBin = filepath.Join(dir, "weftd"), filepath.Join(dir, "weftctl"), filepath.Join(dir, "wireguard-go")
	weftCNIBin = filepath.Join(dir, "weft-cni")
	for bin, pkg := range map[string]string{weftdBin: "./cmd/weftd", weftctlBin: "./cmd/weftctl", wireguardGoBin: "golang.zx2c4.com/wireguard",
		weftCNIBin: "./cmd/weft-cni"} {
		if os.Getenv(PrebuiltEnv) != "" {
			if _, err := os.Stat(bin); err != nil {
				fmt.Printf("%s=%s lacks %s: %v\n", PrebuiltEnv, dir, filepath.Base(bin), err)
				return 1
			}
			continue
		}
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("building %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// newLab builds a lab for one test and removes it when the test ends; on
// failure it prints the weftd logs first.
func newLab(t *testing.T, opts Options) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	opts.Weftd = weftdBin
	l, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, h := range l.Hosts {
				t.Logf("--- weftd log of %s:\n%s", h.Name, h.LogTail(40))
				// WireGuard's own view (endpoints, handshakes, transfer) says
				// which side of a failed path is stuck.
				if wg, err := l.HostExec(h, "wg", "show", "all"); err == nil && wg != "" {
					t.Logf("--- wg show all on %s:\n%s", h.Name, wg)
				}
				// The underlay's neighbours, the counters of its link and the
				// kernel's UDP drop counters (-s: no history file written)
				// say whether packets were lost below WireGuard.
				neigh, _ := Exec(h.Name, "ip", "neigh", "show", "dev", "eth0")
				neigh6, _ := Exec(h.Name, "ip", "-6", "neigh", "show", "dev", "eth0")
				link, _ := Exec(h.Name, "ip", "-s", "link", "show", "eth0")
				drops, _ := Exec(h.Name, "nstat", "-asz", "Udp*Errors", "Udp*NoPorts", "Ip*InDiscards")
				t.Logf("--- underlay of %s:\n%s\n%s\n%s\n%s", h.Name, neigh, neigh6, link, drops)
			}
		}
		l.Close()
	})
	return l
}

// startCluster builds a lab, starts it and waits until every container
// pings every other one.
func startCluster(t *testing.T, opts Options) *Lab {
	t.Helper()
	l := newLab(t, opts)
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "full ping matrix", 20*time.Second, func() error {
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	return l
}

// eventually retries f until it succeeds or timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func routeTo(h *Host, subnet string) (string, error) {
	return Exec(h.Name, "ip", "-4", "route", "show", subnet, "proto", "87")
}

func TestHostGWCluster(t *testing.T) {
	l := startCluster(t, Options{Hosts: 3, Backend: backends.HostGW})
	ctx := context.Background()
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]

	t.Run("hostile leases reach no kernel", func(t *testing.T) { checkHostileLeases(t, l, backends.HostGW) })

	t.Run("killed weftd keeps subnet and traffic", func(t *testing.T) {
		subnet := h2.Subnet
		l.StopWeftd(h2, syscall.SIGKILL)
		// The data path stays: other pairs and traffic to h2 itself flow.
		for _, pair := range [][2]*Host{{h1, h3}, {h3, h1}, {h1, h2}, {h2, h3}} {
			if err := l.Ping(pair[0], pair[1]); err != nil {
				t.Errorf("while weftd on h2 is down, %s -> %s: %v", pair[0].Name, pair[1].Name, err)
			}
		}
		if err := l.StartWeftd(h2); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(ctx, h2); err != nil {
			t.Fatal(err)
		}
		if h2.Subnet != subnet {
			t.Fatalf("h2 came back with %s, had %s", h2.Subnet, subnet)
		}
		if err := l.Ping(h1, h2); err != nil {
			t.Error(err)
		}
	})

	t.Run("route deleted by hand comes back", func(t *testing.T) {
		if _, err := Exec(h1.Name, "ip", "route", "del", h2.Subnet.String()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		eventually(t, "route restored", 10*time.Second, func() error {
			out, err := routeTo(h1, h2.Subnet.String())
			if err == nil && !strings.Contains(out, "via "+h2.PublicIP.String()) {
				err = fmt.Errorf("no route yet")
			}
			return err
		})
		t.Logf("route restored after %s (resync interval 2s)", time.Since(start).Round(time.Millisecond))
		if err := l.Ping(h1, h2); err != nil {
			t.Error(err)
		}
	})

	t.Run("lease of a live host deleted in etcd is reclaimed", func(t *testing.T) {
		key := lease.SubnetKey(h3.Subnet)
		if err := l.Store().Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		eventually(t, "h3 re-claims its subnet", 20*time.Second, func() error {
			records, _, err := l.Store().List(ctx)
			if err != nil {
				return err
			}
			for _, r := range records {
				if r.Key == key && strings.Contains(string(r.Value), h3.PublicIP.String()) {
					return nil
				}
			}
			return fmt.Errorf("lease %s not back", key)
		})
		eventually(t, "traffic to h3 resumes", 15*time.Second, func() error { return l.Ping(h1, h3) })
		env, err := lease.ReadSubnetFile(h3.SubnetFile())
		if err != nil || env.Subnet != h3.Subnet {
			t.Errorf("h3's subnet file says %v (%v), want %s", env.Subnet, err, h3.Subnet)
		}
	})

	t.Run("stopped host's lease deleted removes its routes", func(t *testing.T) {
		l.StopWeftd(h2, syscall.SIGTERM)
		// SIGTERM leaves h2's own routes in place.
		if out, _ := routeTo(h2, h1.Subnet.String()); !strings.Contains(out, "via") {
			t.Errorf("h2 lost its route to h1 on SIGTERM: %q", out)
		}
		if err := l.Store().Delete(ctx, lease.SubnetKey(h2.Subnet)); err != nil {
			t.Fatal(err)
		}
		for _, h := range []*Host{h1, h3} {
			eventually(t, "route to h2 gone from "+h.Name, 10*time.Second, func() error {
				if out, _ := routeTo(h, h2.Subnet.String()); out != "" {
					return fmt.Errorf("still there: %s", out)
				}
				return nil
			})
		}
		if err := l.Ping(h1, h3); err != nil {
			t.Errorf("h1 -> h3 after h2 left: %v", err)
		}
	})
}

// TestBadConfigWaitsWithoutTouchingTheHost starts weftd against configs
// that are missing or wrong: it must say what is wrong, naming the key,
// and change nothing on the host while it waits.
func TestBadConfigWaitsWithoutTouchingTheHost(t *testing.T) {
	l := newLab(t, Options{Hosts: 2})
	ctx := context.Background()
	h := l.Hosts[0]
	cases := []struct{ name, config, want string }{
		{"missing", "", "waiting for the network config"},
		{"invalid JSON", `{"Network":`, "not valid JSON"},
		{"network not a CIDR", `{"Network":"10.5.0.0"}`, `is not an IPv4 CIDR`},
		{"SubnetLen out of range", `{"Network":"10.5.0.0/16","SubnetLen":31}`, `31 is out of range`},
		{"SubnetMin outside", `{"Network":"10.5.0.0/16","SubnetMin":"10.9.0.0"}`, `10.9.0.0 is outside Network 10.5.0.0/16`},
		{"unknown backend", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec"}}`, `unknown backend`},
		{"Network overlaps the underlay", `{"Network":"192.168.0.0/16","Backend":{"Type":"host-gw"}}`, `192.168.0.0/16 overlaps 192.168.50.0/24 on eth0, the underlay`},
		{"truncated", `{"Network":"10.5.0.0/16","Backend":{"Ty`, "not valid JSON"},
		{"wrong type", `{"Network":"10.5.0.0/16","SubnetLen":"24"}`, `key \"SubnetLen\": expected a int`},
		{"enormous value", `{"Network":"10.5.0.0/16","SubnetLen":1e300}`, `SubnetLen`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			startWithConfig(t, l, h, c.config, c.want)
			if _, err := os.Stat(h.SubnetFile()); err == nil {
				t.Error("subnet file written while the config is bad")
			}
			if out, _ := Exec(h.Name, "ip", "route", "show", "proto", "87"); out != "" {
				t.Errorf("routes installed while waiting: %s", out)
			}
			if out, _ := Exec(h.Name, "cat", "/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(out) != "0" {
				t.Errorf("ip_forward changed while waiting: %s", out)
			}
			if records, _, _ := l.Store().List(ctx); len(records) != 0 {
				t.Errorf("a lease was written while the config is bad: %v", records)
			}
		})
	}
	// And once the config is fixed, the same weftd goes on by itself.
	if err := l.StartWeftd(h); err != nil {
		t.Fatal(err)
	}
	if err := l.PutConfig(ctx, l.Config()); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h); err != nil {
		t.Fatal(err)
	}
}

// startWithConfig puts config (none when empty), starts weftd on h with a
// fresh log, stops it when the test ends, and waits until its log says want.
func startWithConfig(t *testing.T, l *Lab, h *Host, config, want string) {
	t.Helper()
	if config != "" {
		if err := l.PutConfig(context.Background(), config); err != nil {
			t.Fatal(err)
		}
	}
	os.Truncate(h.LogPath(), 0)
	if err := l.StartWeftd(h); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.StopWeftd(h, syscall.SIGTERM) })
	eventually(t, "log line", 10*time.Second, func() error {
		if log, _ := os.ReadFile(h.LogPath()); !strings.Contains(string(log), want) {
			return fmt.Errorf("log lacks %s:\n%s", want, log)
		}
		return nil
	})
}
