package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// TestClonedHostAndPins: issue 42, on a wireguard lab.
//   - A cloned host (host 2's key directory copied to host 3, whose
//     machine ID differs) makes a new identity, host ID and WireGuard key
//     and claims a subnet of its own; host 2 keeps its subnet, and every
//     pair reaches every other.
//   - Host 1 runs with -require-encryption: the config switched to vxlan,
//     then to StrictEncryption off, leaves it on wireguard with strict
//     mode (weftctl status says what it refuses) and nothing from its
//     container crosses the underlay in clear.
//   - The config switched to the extension backend: no host takes it up
//     live, no command runs, and status says a restart is needed.
func TestClonedHostAndPins(t *testing.T) {
	l := newLab(t, Options{Hosts: 3, Backend: backends.WireGuard, WeftdHosts: 2})
	ctx := context.Background()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	subnet2 := h2.Subnet

	// The clone: host 2's identity, host ID and WireGuard key, another
	// machine ID.
	for _, name := range []string{keys.IdentityFile, keys.HostIDFile, "wg.key"} {
		data, err := os.ReadFile(filepath.Join(h2.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(h3.Dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	machineID := filepath.Join(h3.Dir, "machine-id")
	if err := os.WriteFile(machineID, []byte("0123456789abcdef0123456789abcdef\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := l.StartWeftd(h3, "-machine-id-file", machineID); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h3); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h3); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h3.WaitLogLine(0, 5*time.Second, "identity was made on another machine"); err != nil {
		t.Errorf("the clone did not say it made a new identity: %v\n%s", err, h3.LogTail(20))
	}
	if h3.Subnet == subnet2 || !h3.Subnet.IsValid() {
		t.Errorf("the clone leased %s, host 2 holds %s: want a subnet of its own", h3.Subnet, subnet2)
	}
	eventually(t, "full ping matrix with the clone", 30*time.Second, func() error {
		if table, ok := l.PingMatrix(); !ok {
			return fmt.Errorf("\n%s", table)
		}
		return nil
	})
	if env, err := lease.ReadSubnetFile(h2.SubnetFile()); err != nil || env.Subnet != subnet2 {
		t.Errorf("host 2's subnet file says %s (%v) after its clone started, want %s", env.Subnet, err, subnet2)
	}

	// Host 1 pins encryption.
	l.StopWeftd(h1, syscall.SIGTERM)
	if err := l.StartWeftd(h1, "-require-encryption"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h1); err != nil {
		t.Fatal(err)
	}
	capture, err := l.CaptureOn(l.Underlay, "br0", fmt.Sprintf("icmp and host %s", h1.ContainerIP()), "pins-clear")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ config, refused string }{
		{fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"vxlan"}}`, DefaultNetwork), "Backend.Type \"vxlan\""},
		{fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"wireguard"}}`, DefaultNetwork), "StrictEncryption off"},
	} {
		if err := l.PutConfig(ctx, tt.config); err != nil {
			t.Fatal(err)
		}
		eventually(t, "host 1 refuses "+tt.refused, 10*time.Second, func() error {
			if note := configNote(h1); !strings.Contains(note, tt.refused) {
				return fmt.Errorf("status says %q", note)
			}
			return nil
		})
		for _, to := range []*Host{h2, h3} {
			l.Ping(h1, to) // may pass (wireguard kept for it) or not: never in clear
		}
		if st := statusOf(t, h1); st.Backend != backends.WireGuard || !st.Strict {
			t.Errorf("with %s, host 1 runs %q, strict %v; want wireguard, strict", tt.config, st.Backend, st.Strict)
		}
	}
	if _, decoded, _ := capture.Stop(); decoded != "" {
		t.Errorf("host 1's container was reached in clear across the underlay:\n%s", firstLines(decoded, 10))
	}

	// The extension backend: never taken up live.
	ran := filepath.Join(h2.Dir, "extension-ran")
	if err := l.PutConfig(ctx, fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"extension","PreStartupCommand":"touch %s"}}`,
		DefaultNetwork, ran)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "host 2 says a restart is needed", 10*time.Second, func() error {
		if note := configNote(h2); !strings.Contains(note, "restart weftd") {
			return fmt.Errorf("status says %q", note)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // the config watch has seen it everywhere
	if _, err := os.Stat(ran); err == nil {
		t.Error("the extension's PreStartupCommand ran on a running host")
	}
	if st := statusOf(t, h2); st.Backend == backends.Extension {
		t.Errorf("host 2 switched to extension live")
	}
}

// weftStatus is the part of weftctl status a test reads.
type weftStatus struct {
	Backend string `json:"backend"`
	Strict  bool
	Note    string `json:"config_not_followed"`
}

// statusOf is h's weftctl status.
func statusOf(t *testing.T, h *Host) weftStatus {
	t.Helper()
	s, err := readStatus(h)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// configNote is what h's weftd says it does not follow of the config
// (empty while its status cannot be read).
func configNote(h *Host) string {
	s, _ := readStatus(h)
	return s.Note
}

// readStatus is h's weftctl status, and whether it could be read.
func readStatus(h *Host) (weftStatus, error) {
	out, err := Exec(h.Name, weftctlBin, "status", "-o", "json")
	var raw struct {
		weftStatus
		StrictEncryption *struct{} `json:"strict_encryption"`
	}
	if err == nil {
		err = json.Unmarshal([]byte(out), &raw)
	}
	if err != nil {
		return weftStatus{}, fmt.Errorf("weftctl status on %s: %w\n%s", h.Name, err, out)
	}
	raw.Strict = raw.StrictEncryption != nil
	return raw.weftStatus, nil
}
