package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
)

// TestStrictEncryption: with "StrictEncryption" a WireGuard cluster sends
// nothing to another host's subnet in clear, in either firewall mode: a
// plain route to a peer's subnet added by hand via the underlay carries no
// container packet (the capture shows none; strict encryption's drop
// counter, in weftctl status, grows); a peer whose lease names vxlan is
// skipped as unreachable, and status says so; after weftd is SIGKILLed the
// rule is still there, and the restarted weftd keeps it.
func TestStrictEncryption(t *testing.T) {
	for _, mode := range []struct {
		name string
		nft  bool
		show []string // what lists the rule on a host
	}{
		{"iptables", false, []string{"iptables", "-t", "mangle", "-S", "WEFT-STRICT"}},
		{"nftables", true, []string{"nft", "list", "table", "ip", "weft-ipv4"}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			config := fmt.Sprintf(`{"Network":%q,"StrictEncryption":true,"EnableNFTables":%v,"Backend":{"Type":"wireguard"}}`, DefaultNetwork, mode.nft)
			l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard, Config: config})
			h1, h2 := l.Hosts[0], l.Hosts[1]
			checkEncrypted(t, l, h1, h2)

			t.Run("a plain route by hand carries nothing", func(t *testing.T) { checkStrictDropsPlainRoute(t, l, h1, h2) })

			t.Run("a vxlan peer is unreachable and status says so", func(t *testing.T) {
				key := freeKeys(l, 1)[0]
				value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan"%s}`, l.underlayAddr(77), fakeBackendData(t, backends.VXLAN, 77))
				if _, err := l.Store().Create(context.Background(), key, []byte(value), time.Hour); err != nil {
					t.Fatal(err)
				}
				eventually(t, "the vxlan peer shown as unreachable", 10*time.Second, func() error {
					out, err := Exec(h1.Name, weftctlBin, "status")
					if err != nil || !lineWith(out, key, `SKIPPED: runs backend "vxlan", this network uses "wireguard"; unreachable under StrictEncryption`) {
						return fmt.Errorf("weftctl status (%v):\n%s", err, out)
					}
					return nil
				})
			})

			t.Run("the rule outlives a SIGKILL of weftd", func(t *testing.T) {
				l.StopWeftd(h1, syscall.SIGKILL)
				out, err := Exec(h1.Name, mode.show...)
				if err != nil || !strings.Contains(out, "DROP") && !strings.Contains(out, "counter") {
					t.Fatalf("after SIGKILL the strict rule is gone (%v):\n%s", err, out)
				}
				if err := l.StartWeftd(h1); err != nil {
					t.Fatal(err)
				}
				if err := l.WaitReady(context.Background(), h1); err != nil {
					t.Fatal(err)
				}
				checkEncrypted(t, l, h1, h2)
			})

			t.Run("weftctl cleanup removes the rule", func(t *testing.T) {
				l.StopWeftd(h1, syscall.SIGTERM)
				if out, err := Exec(h1.Name, weftctlBin, "cleanup", "-subnet-file", h1.SubnetFile()); err != nil {
					t.Fatalf("weftctl cleanup: %v\n%s", err, out)
				}
				if out, err := Exec(h1.Name, mode.show...); err == nil && (strings.Contains(out, "DROP") || strings.Contains(out, "counter drop")) {
					t.Errorf("the strict rule stays after weftctl cleanup:\n%s", out)
				}
			})
		})
	}
}

// checkStrictDropsPlainRoute adds a route to to's subnet via its
// underlay address on from, which is more specific than WireGuard's route
// for the Network, pings to's container from from's with a known payload,
// and checks that the payload never crossed the underlay and that the
// strict drop counter in weftctl status grew.
func checkStrictDropsPlainRoute(t *testing.T, l *Lab, from, to *Host) {
	before := strictDropped(t, from)
	route := []string{to.Subnet.String(), "via", to.PublicIP.String(), "dev", "eth0"}
	if _, err := Exec(from.Name, append([]string{"ip", "route", "add"}, route...)...); err != nil {
		t.Fatal(err)
	}
	defer Exec(from.Name, append([]string{"ip", "route", "del"}, route...)...)
	pattern := "5ec2e7c1ea2f00d0123456789abcdef0"
	capture, err := l.CaptureUnderlay("strict")
	if err != nil {
		t.Fatal(err)
	}
	_, perr := Exec(from.Container, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-p", pattern, to.ContainerIP().String())
	raw, decoded, err := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if perr == nil {
		t.Error("the ping went through a plain route under strict encryption")
	}
	needle, _ := hex.DecodeString(pattern)
	if bytes.Contains(raw, needle) {
		t.Fatalf("a container's ping crossed the underlay in clear:\n%s", decoded)
	}
	if after := strictDropped(t, from); after < before+3 {
		t.Errorf("the strict drop counter went from %d to %d for 3 pings", before, after)
	}
}

var strictLine = regexp.MustCompile(`strict encryption: on; (\d+) packets`)

// strictDropped is the strict drop counter weftctl status shows on h.
func strictDropped(t *testing.T, h *Host) uint64 {
	t.Helper()
	out, err := Exec(h.Name, weftctlBin, "status")
	m := strictLine.FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("weftctl status shows no strict encryption (%v):\n%s", err, out)
	}
	n, _ := strconv.ParseUint(m[1], 10, 64)
	return n
}

// lineWith reports whether a line of text holds all of parts.
func lineWith(text string, parts ...string) bool {
	for _, line := range strings.Split(text, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}
