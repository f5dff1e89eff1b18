package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
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

// TestMembershipEnforced: issue 42's signed membership, on a wireguard
// lab.
//   - A rolling upgrade: hosts 1–3 start on the last weft that did not
//     sign its leases (built from git), then each in turn runs today's
//     weftd: every host keeps its subnet and every pair keeps working.
//   - Membership from weftctl alone: `ca create`, `config put -ca`, every
//     weftd restarted with -membership-ca (enforce mode), then on each
//     host `member request`, signed with `member sign`; hosts 1–3 then
//     reach each other.
//   - Host 4 runs weftd with the same CA file but is never enrolled: it is
//     a peer of none (every enrolled host skips its lease as no certified
//     member) and no ping crosses either way.
//   - Host 2 rotates its WireGuard key and host 3 changes its underlay
//     address, without the CA: every enrolled pair keeps working.
//   - A config written without the CA's seal is refused by every host,
//     which keeps running its own.
func TestMembershipEnforced(t *testing.T) {
	if os.Getenv(PrebuiltEnv) != "" {
		t.Skip("builds an older weftd from git: not in the VM tier")
	}
	caDir := t.TempDir()
	l := newLab(t, Options{Hosts: 4, Backend: backends.WireGuard})
	ctx := context.Background()
	h1, h2, h3, h4 := l.Hosts[0], l.Hosts[1], l.Hosts[2], l.Hosts[3]
	members := []*Host{h1, h2, h3}
	weftctl := func(h *Host, args ...string) string {
		t.Helper()
		full := append([]string{weftctlBin, "-etcd-endpoints", l.EtcdEndpoint(), "-wireguard-key-file", filepath.Join(h.Dir, "wg.key")}, args...)
		out, err := Exec(h.Name, full...)
		if err != nil {
			t.Fatalf("weftctl %s on %s: %v\n%s", strings.Join(args, " "), h.Name, err, out)
		}
		return out
	}
	membersReach := func(what string, timeout time.Duration) {
		t.Helper()
		eventually(t, what, timeout, func() error {
			for _, a := range members {
				for _, b := range members {
					if a != b {
						if err := l.Ping(a, b); err != nil {
							return fmt.Errorf("%s → %s: %v", a.Name, b.Name, err)
						}
					}
				}
			}
			return nil
		})
	}
	restart := func(h *Host, args ...string) {
		t.Helper()
		l.StopWeftd(h, syscall.SIGTERM)
		if err := l.StartWeftd(h, args...); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(ctx, h); err != nil {
			t.Fatal(err)
		}
	}

	// The rolling upgrade from unsigned leases.
	today := l.opts.Weftd
	l.opts.Weftd = buildWeftdAt(t, lastUnsignedWeft)
	if err := l.PutConfig(ctx, l.Config()); err != nil {
		t.Fatal(err)
	}
	for _, h := range members {
		if err := l.StartWeftd(h); err != nil {
			t.Fatal(err)
		}
	}
	subnets := map[*Host]string{}
	for _, h := range members {
		if err := l.WaitReady(ctx, h); err != nil {
			t.Fatal(err)
		}
		if err := l.AddContainer(h); err != nil {
			t.Fatal(err)
		}
		subnets[h] = h.Subnet.String()
		if got := leaseOf(t, l, h.Subnet); got.Signed {
			t.Fatalf("the weft before signing wrote a signed lease for %s", h.Name)
		}
	}
	membersReach("the unsigned cluster reaches each other", 30*time.Second)
	l.opts.Weftd = today
	for _, h := range members {
		restart(h)
		if env, err := lease.ReadSubnetFile(h.SubnetFile()); err != nil || env.Subnet.String() != subnets[h] {
			t.Errorf("%s upgraded: subnet file %s (%v), had %s", h.Name, env.Subnet, err, subnets[h])
		}
		if got := leaseOf(t, l, netip.MustParsePrefix(subnets[h])); !got.Signed {
			t.Errorf("%s upgraded: its lease is not signed", h.Name)
		}
		membersReach(h.Name+" upgraded, every pair reaches each other", 30*time.Second)
	}

	// Membership from weftctl alone.
	caKey, caPub := filepath.Join(caDir, "ca.key"), filepath.Join(caDir, "ca.pub")
	weftctl(h1, "ca", "create", caDir)
	configFile := filepath.Join(caDir, "config.json")
	if err := os.WriteFile(configFile, []byte(l.Config()), 0o644); err != nil {
		t.Fatal(err)
	}
	weftctl(h1, "config", "put", "-ca", caKey, configFile)
	for _, h := range members {
		restart(h, "-membership-ca", caPub)
	}
	if err := l.StartWeftd(h4, "-membership-ca", caPub); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h4); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h4); err != nil {
		t.Fatal(err)
	}
	for _, h := range members {
		request := strings.TrimSpace(weftctl(h, "member", "request"))
		if out := weftctl(h1, "member", "sign", "-ca", caKey, request); !strings.Contains(out, "certifying host") {
			t.Errorf("member sign printed %q", out)
		}
	}
	for _, h := range members {
		eventually(t, h.Name+" publishes its certificate", 15*time.Second, func() error {
			if m := membershipOf(t, h); m.Mode != "enforce" || m.Certificate == "" {
				return fmt.Errorf("membership status %+v, want enforce with a certificate", m)
			}
			return nil
		})
	}
	membersReach("enrolled hosts reach each other", 30*time.Second)

	// Host 4 is no member: skipped by every member, reached by none.
	key4 := lease.SubnetKey(h4.Subnet)
	for _, h := range members {
		eventually(t, h.Name+" skips host 4", 10*time.Second, func() error {
			if why := skippedReason(t, h, key4); !strings.Contains(why, "no certified member") {
				return fmt.Errorf("host 4's lease skipped with %q", why)
			}
			return nil
		})
		if err := l.Ping(h, h4); err == nil {
			t.Errorf("%s reached host 4, which is no member", h.Name)
		}
		if err := l.Ping(h4, h); err == nil {
			t.Errorf("host 4, no member, reached %s", h.Name)
		}
	}

	// Key rotation and an address change, without the CA.
	weftctl(h2, "keys", "rotate")
	renumber(t, h3, l.underlayAddr(63))
	membersReach("enrolled hosts reach each other after a key rotation and an address change", 30*time.Second)

	// A config put without the seal: refused, the running one kept.
	if err := l.PutConfig(ctx, fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"vxlan"}}`, DefaultNetwork)); err != nil {
		t.Fatal(err)
	}
	for _, h := range members {
		if _, _, err := h.WaitLogLine(0, 10*time.Second, "refusing the network config"); err != nil {
			t.Errorf("%s did not refuse the unsealed config: %v", h.Name, err)
		}
	}
	membersReach("members still reach each other on wireguard", 5*time.Second)
	for _, h := range members {
		if st := statusOf(t, h); st.Backend != backends.WireGuard {
			t.Errorf("%s runs %q after an unsealed config, want wireguard", h.Name, st.Backend)
		}
	}
}

// memberState is the membership section of a host's status.
type memberState struct {
	Mode        string `json:"mode"`
	Certificate string `json:"certificate"`
	Note        string `json:"note"`
}

// membershipOf is h's membership status.
func membershipOf(t *testing.T, h *Host) memberState {
	t.Helper()
	var s struct {
		Membership memberState `json:"membership"`
	}
	statusJSON(t, h, &s)
	return s.Membership
}

// skippedReason is why h's weftd skips the lease at key ("" when it does
// not).
func skippedReason(t *testing.T, h *Host, key string) string {
	t.Helper()
	var s struct {
		Skipped []struct{ Key, Reason string } `json:"skipped"`
	}
	statusJSON(t, h, &s)
	for _, sk := range s.Skipped {
		if sk.Key == key {
			return sk.Reason
		}
	}
	return ""
}

// statusJSON decodes h's `weftctl status -o json` into v.
func statusJSON(t *testing.T, h *Host, v any) {
	t.Helper()
	out, err := Exec(h.Name, weftctlBin, "status", "-o", "json")
	if err == nil {
		err = json.Unmarshal([]byte(out), v)
	}
	if err != nil {
		t.Fatalf("status of %s: %v", h.Name, err)
	}
}

// lastUnsignedWeft is the last commit of weft whose hosts did not sign
// their leases (they had host IDs): the rolling upgrade starts there.
const lastUnsignedWeft = "7b51370^"

// buildWeftdAt builds weftd as it was at commit, from this checkout's git
// history.
func buildWeftdAt(t *testing.T, commit string) string {
	t.Helper()
	dir := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C .. archive "$0" | tar -x -C "$1"`, commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("git archive %s (the lab tests run in a git checkout): %v\n%s", commit, err, out)
	}
	bin := filepath.Join(dir, "weftd-"+strings.TrimSuffix(commit, "^"))
	build := exec.Command("go", "build", "-o", bin, "./cmd/weftd")
	build.Dir = dir
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building weftd at %s: %v\n%s", commit, err, out)
	}
	return bin
}
