package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// extensionScript is the lab's extension data path: host-gw done by hand
// (a route to each peer's subnet via its PublicIP), with every call
// written to dir/calls with the host it ran on, its environment and its
// stdin; the files dir/fail and dir/hang make an add fail or hang.
const extensionScript = `#!/bin/sh
D=%s
host=$(ip netns identify)
read data
echo "$1 host=$host NETWORK=$NETWORK SUBNET=$SUBNET PUBLIC_IP=$PUBLIC_IP stdin=$data" >> "$D/calls"
case "$1" in
add)
	[ -e "$D/fail" ] && { echo "refused by the test"; exit 3; }
	if [ -e "$D/hang" ]; then sleep 60 & echo $! > "$D/hang.pid"; wait; fi
	ip route replace "$SUBNET" via "$PUBLIC_IP" ;;
remove)
	ip route del "$SUBNET" via "$PUBLIC_IP" ;;
esac
`

// TestExtensionCluster: the extension backend with flannel's captured
// PreStartupCommand and a script for the others carries traffic between
// three hosts; each command gets flannel's environment and stdin; a
// command that hangs is killed at CommandTimeout and one that fails is
// retried at the next resync, while weftd goes on answering; a lease that
// goes gets its remove command.
func TestExtensionCluster(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "ext.sh")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(extensionScript, dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"extension","PreStartupCommand":"echo {\"Token\":\"abc\"}",`+
		`"PostStartupCommand":"%[2]s post","SubnetAddCommand":"%[2]s add","SubnetRemoveCommand":"%[2]s remove","CommandTimeout":2}}`,
		DefaultNetwork, script)
	l := startCluster(t, Options{Hosts: 3, Config: config})
	ctx := context.Background()
	calls := func() string { data, _ := os.ReadFile(filepath.Join(dir, "calls")); return string(data) }
	checkLeaseValues(t, l, func(h *Host) string {
		return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"extension","BackendData":"{\"Token\":\"abc\"}"}`, h.PublicIP)
	})
	for _, h := range l.Hosts {
		post := fmt.Sprintf("post host=%s NETWORK=%s SUBNET=%s PUBLIC_IP=%s stdin=\n", h.Name, DefaultNetwork, h.Subnet, h.PublicIP)
		if n := strings.Count(calls(), post); n != 1 {
			t.Errorf("%s: PostStartupCommand ran %d times as %q:\n%s", h.Name, n, post, calls())
		}
		for _, p := range l.Hosts {
			add := fmt.Sprintf("add host=%s NETWORK= SUBNET=%s PUBLIC_IP=%s stdin={\"Token\":\"abc\"}\n", h.Name, p.Subnet, p.PublicIP)
			if p != h && !strings.Contains(calls(), add) {
				t.Errorf("no %q in\n%s", add, calls())
			}
		}
	}

	// A new peer whose add hangs, then fails, then works; then it goes.
	h1 := l.Hosts[0]
	other := l.underlayAddr(99)
	// A subnet none of the hosts leased (they pick theirs at random).
	key := freeSubnets(l, 1, 24)[0]
	subnet := strings.Replace(key, "-", "/", 1)
	logHas := func(h *Host, text string) func() error {
		return func() error {
			if !strings.Contains(h.LogTail(400), text) {
				return fmt.Errorf("no %q in the log", text)
			}
			return nil
		}
	}
	os.WriteFile(filepath.Join(dir, "hang"), nil, 0o644)
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"extension","BackendData":"t2"}`, other)
	if _, err := l.Store().Create(ctx, key, []byte(value), time.Hour); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the hung add killed", 20*time.Second, logHas(h1, "killed after the 2s CommandTimeout"))
	// Every host runs the hung add and writes hang.pid; one may have just
	// truncated it.
	var pid int
	eventually(t, "a pid in hang.pid", 5*time.Second, func() (err error) {
		pidData, _ := os.ReadFile(filepath.Join(dir, "hang.pid"))
		pid, err = strconv.Atoi(strings.TrimSpace(string(pidData)))
		return err
	})
	eventually(t, "the hung command's child gone", 5*time.Second, func() error {
		if syscall.Kill(pid, 0) == nil {
			return fmt.Errorf("pid %d alive", pid)
		}
		return nil
	})
	start := time.Now()
	if out, err := Exec(h1.Name, weftctlBin, "status"); err != nil || time.Since(start) > 2*time.Second {
		t.Errorf("weftd does not answer while a command hangs (%v): %v %s", time.Since(start), err, out)
	}
	os.WriteFile(filepath.Join(dir, "fail"), nil, 0o644)
	os.Remove(filepath.Join(dir, "hang"))
	eventually(t, "the failing add logged with its output", 20*time.Second, logHas(h1, "refused by the test"))
	if err := logHas(h1, "runs again at the next resync")(); err != nil {
		t.Error(err)
	}
	os.Remove(filepath.Join(dir, "fail"))
	for _, h := range l.Hosts {
		eventually(t, h.Name+" routes the new peer after the retry", 20*time.Second, func() error {
			out, _ := Exec(h.Name, "ip", "route", "show", subnet)
			if !strings.Contains(out, "via "+other.String()) {
				return fmt.Errorf("route %q", out)
			}
			return nil
		})
	}
	if err := l.Store().Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		eventually(t, h.Name+" removes the gone peer's route", 20*time.Second, func() error {
			if out, _ := Exec(h.Name, "ip", "route", "show", subnet); out != "" {
				return fmt.Errorf("route %q", out)
			}
			return nil
		})
	}
	if remove := "remove host=" + h1.Name + " NETWORK= SUBNET=" + subnet + " PUBLIC_IP=" + other.String() + " stdin=t2\n"; !strings.Contains(calls(), remove) {
		t.Errorf("no %q in\n%s", remove, calls())
	}
	if table, ok := l.PingMatrix(); !ok {
		t.Errorf("the cluster lost its paths:\n%s", table)
	}
}

// TestExtensionDualStack: on a dual-stack network the peer commands get
// both halves of each lease (IPV6SUBNET, PUBLIC_IPV6), and a script that
// routes both families carries traffic in each; alloc and extension are
// allowed with "EnableIPv6", as in flannel.
func TestExtensionDualStack(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "ext6.sh")
	body := `#!/bin/sh
echo "$1 SUBNET=$SUBNET PUBLIC_IP=$PUBLIC_IP IPV6SUBNET=$IPV6SUBNET PUBLIC_IPV6=$PUBLIC_IPV6" >> "` + dir + `/calls"
[ "$1" = add ] || exit 0
ip route replace "$SUBNET" via "$PUBLIC_IP" && ip -6 route replace "$IPV6SUBNET" via "$PUBLIC_IPV6"
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":"extension","SubnetAddCommand":"%s add"}}`,
		DefaultNetwork, DefaultIPv6Network, script)
	l := startCluster(t, Options{Hosts: 2, IPv6: true, Config: config})
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	for _, h := range l.Hosts {
		add := fmt.Sprintf("add SUBNET=%s PUBLIC_IP=%s IPV6SUBNET=%s PUBLIC_IPV6=%s\n", h.Subnet, h.PublicIP, h.IPv6Subnet, h.PublicIPv6)
		if !strings.Contains(string(calls), add) {
			t.Errorf("no %q in\n%s", add, calls)
		}
	}
}
