package extension

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions(json.RawMessage(`{"Type":"extension","SubnetAddCommand":"/bin/add $SUBNET","CommandTimeout":2.5}`))
	if err != nil || o.SubnetAddCommand != "/bin/add $SUBNET" || o.CommandTimeout != 2500*time.Millisecond {
		t.Fatalf("%+v %v", o, err)
	}
	if o, _ := ParseOptions(nil); o.CommandTimeout != DefaultCommandTimeout {
		t.Errorf("default timeout %v", o.CommandTimeout)
	}
	for raw, want := range map[string]string{
		`{"CommandTimeout":0}`:        `key "Backend.CommandTimeout": 0 is not between 1 and 3600 seconds`,
		`{"SubnetAddCommand":"  "}`:   `key "Backend.SubnetAddCommand": only white space`,
		`{"PreStartupCommand":false}`: `extension Backend options`,
	} {
		if _, err := ParseOptions(json.RawMessage(raw)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", raw, err, want)
		}
	}
}

// TestCommandRun: words split without a shell, $VAR expanded from the
// environment given, stdin with flannel's newline, output trimmed, a
// failure named with its key.
func TestCommandRun(t *testing.T) {
	ctx := context.Background()
	out, err := Command{Key: "PreStartupCommand", Line: `echo {"Token":"abc"}`}.Run(ctx, 5*time.Second)
	if err != nil || out != `{"Token":"abc"}` {
		t.Errorf("echo: %q %v", out, err)
	}
	out, err = Command{Key: "k", Line: "echo ${SUBNET} via $PUBLIC_IP; rm -rf /", Env: []string{"SUBNET=10.5.1.0/24", "PUBLIC_IP=192.0.2.1"}}.Run(ctx, 5*time.Second)
	if err != nil || out != "10.5.1.0/24 via 192.0.2.1; rm -rf /" {
		t.Errorf("expand: %q %v (no shell may run the rm)", out, err)
	}
	out, err = Command{Key: "k", Line: "od -c", Stdin: "ab"}.Run(ctx, 5*time.Second)
	if err != nil || !strings.Contains(out, `a   b  \n`) {
		t.Errorf("stdin: %q %v", out, err)
	}
	out, err = Command{Key: "SubnetAddCommand", Line: "sh -c exit_7_with_output", Env: nil}.Run(ctx, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), `SubnetAddCommand "sh -c exit_7_with_output"`) || !strings.Contains(out, "not found") {
		t.Errorf("failure: %q %v", out, err)
	}
}

// TestCommandBounds: issue 30, item 8. A command's output is kept up to
// MaxOutput (64 MiB printed grows nothing) with the rest counted; the
// commands do not get weftd's etcd credentials; a PreStartupCommand whose
// output would make the lease too large stops Setup naming the bound.
func TestCommandBounds(t *testing.T) {
	ctx := context.Background()
	out, err := Command{Key: "k", Line: "head -c 67108864 /dev/zero"}.Run(ctx, 30*time.Second)
	if err != nil || len(out) > MaxOutput+100 || !strings.HasSuffix(out, fmt.Sprintf("[%d more bytes of output not kept]", 64<<20-MaxOutput)) {
		t.Errorf("64 MiB of output: %d bytes kept, ending %q, %v", len(out), out[max(0, len(out)-60):], err)
	}
	t.Setenv("WEFTD_ETCD_PASSWORD", "s3cret-weftd")
	t.Setenv("FLANNELD_ETCD_PASSWORD", "s3cret-flanneld")
	t.Setenv("WEFT_TEST_KEPT", "kept")
	out, err = Command{Key: "k", Line: "env"}.Run(ctx, 5*time.Second)
	if err != nil || strings.Contains(out, "s3cret") || !strings.Contains(out, "WEFT_TEST_KEPT=kept") {
		t.Errorf("environment of a command: %v\n%s", err, out)
	}
	raw := json.RawMessage(fmt.Sprintf(`{"PreStartupCommand":"head -c %d /dev/zero"}`, MaxBackendData))
	b, err := New(raw, underlay.ExternalInterface{MTU: 1500}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(ctx); err == nil || !strings.Contains(err.Error(), "more than the 8192 a lease carries") {
		t.Errorf("oversized PreStartupCommand output: %v", err)
	}
	b.Close()
}

// TestCommandTimeoutKillsGroup: a command past its time is killed with
// its children, and Run returns at once.
func TestCommandTimeoutKillsGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	script := filepath.Join(t.TempDir(), "hang.sh")
	os.WriteFile(script, []byte("#!/bin/sh\nsleep 60 &\necho $! > \"$PIDFILE\"\necho started\nwait\n"), 0o755)
	start := time.Now()
	out, err := Command{Key: "SubnetAddCommand", Line: script, Env: []string{"PIDFILE=" + pidFile}}.Run(context.Background(), 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "killed after the 500ms CommandTimeout") || out != "started" {
		t.Fatalf("%q %v", out, err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Run returned after %v", took)
	}
	data, _ := os.ReadFile(pidFile)
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &pid); err != nil {
		t.Fatalf("pid file %q", data)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the script's child %d outlived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func peer(key, subnet, ip, data string) mesh.Peer {
	p := mesh.Peer{Key: key, Subnet: netip.MustParsePrefix(subnet), PublicIP: netip.MustParseAddr(ip)}
	if data != "" {
		p.BackendData = json.RawMessage(data)
	}
	return p
}

func TestWantedAndPlan(t *testing.T) {
	d := mesh.Desired{Peers: []mesh.Peer{
		peer("a", "10.5.1.0/24", "192.0.2.1", `"tok"`),
		peer("b", "10.5.2.0/24", "192.0.2.2", ""),
		peer("c", "10.5.3.0/24", "192.0.2.3", `{"Token":"abc"}`),
	}}
	want, skipped := Wanted(d)
	if len(want) != 2 || want["a"].Data != "tok" || want["b"].Data != "" || len(skipped) != 1 ||
		!strings.Contains(skipped[0].Error(), "peer c: BackendData {\"Token\":\"abc\"} is not a JSON string") {
		t.Fatalf("%+v %v", want, skipped)
	}
	if env := strings.Join(want["a"].Env(), " "); env != "SUBNET=10.5.1.0/24 PUBLIC_IP=192.0.2.1 IPV6SUBNET= PUBLIC_IPV6=" {
		t.Errorf("env %q", env)
	}
	done := map[string]Subnet{"a": want["a"], "z": {Key: "z"}}
	moved := want["b"]
	done["b"] = moved
	moved.PublicIP = netip.MustParseAddr("192.0.2.9")
	want["b"] = moved
	remove, add := Plan(want, done)
	if len(remove) != 1 || remove[0].Key != "z" || len(add) != 1 || add[0].Key != "b" {
		t.Errorf("remove %+v add %+v", remove, add)
	}
}

// TestWorkerRetriesAndNeverBlocks: Apply returns while a command runs; a
// failing add is run again by the next Apply, the other peers' adds are
// not held back by it, and a gone peer gets its remove.
func TestWorkerRetriesAndNeverBlocks(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "cmd.sh")
	os.WriteFile(script, []byte(`#!/bin/sh
read data
echo "$1 $SUBNET $PUBLIC_IP $data" >> "$DIR/calls"
[ "$1" = add ] && [ -e "$DIR/fail-$PUBLIC_IP" ] && { echo refused; exit 3; }
[ "$1" = add ] && [ -e "$DIR/slow" ] && sleep 1
exit 0
`), 0o755)
	t.Setenv("DIR", dir)
	raw := json.RawMessage(`{"Type":"extension","PostStartupCommand":"` + script + ` post","SubnetAddCommand":"` + script +
		` add","SubnetRemoveCommand":"` + script + ` remove","CommandTimeout":5}`)
	b, err := New(raw, underlay.ExternalInterface{MTU: 1500}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	calls := func() string { data, _ := os.ReadFile(filepath.Join(dir, "calls")); return string(data) }
	waitFor := func(line string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(calls(), line) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in\n%s", line, calls())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	self := lease.Lease{Subnet: netip.MustParsePrefix("10.5.9.0/24"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9")}}
	network := netip.MustParsePrefix("10.5.0.0/16")
	os.WriteFile(filepath.Join(dir, "fail-192.0.2.1"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "slow"), nil, 0o644)
	d := mesh.Desired{Network: network, Self: self, Peers: []mesh.Peer{
		peer("a", "10.5.1.0/24", "192.0.2.1", `"x"`), peer("b", "10.5.2.0/24", "192.0.2.2", `"y"`)}}
	start := time.Now()
	if err := b.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if err := b.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Apply waited %v for the commands", took)
	}
	waitFor("post 10.5.9.0/24 192.0.2.9 \n")
	waitFor("add 10.5.1.0/24 192.0.2.1 x\n")
	waitFor("add 10.5.2.0/24 192.0.2.2 y\n")
	os.Remove(filepath.Join(dir, "fail-192.0.2.1"))
	os.Remove(filepath.Join(dir, "slow"))
	b.Apply(context.Background(), d) // the next resync
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(calls(), "add 10.5.1.0/24") < 2 || len(b.doneKeys()) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("failed add not retried:\n%s", calls())
		}
		b.Apply(context.Background(), d)
		time.Sleep(20 * time.Millisecond)
	}
	if n := strings.Count(calls(), "add 10.5.2.0/24"); n != 1 {
		t.Errorf("the add that succeeded ran %d times", n)
	}
	if n := strings.Count(calls(), "post "); n != 1 {
		t.Errorf("PostStartupCommand ran %d times for one lease", n)
	}
	d.Peers = d.Peers[1:]
	b.Apply(context.Background(), d)
	waitFor("remove 10.5.1.0/24 192.0.2.1 x\n")

	// Issue 30, item 11: leaving the extension backend (the config moved
	// to another) removes every peer still added, once.
	waitFor("remove 10.5.1.0/24")
	for len(b.doneKeys()) != 1 {
		time.Sleep(10 * time.Millisecond)
	}
	if err := b.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(calls(), "remove 10.5.2.0/24 192.0.2.2 y\n") || strings.Count(calls(), "remove ") != 2 || len(b.doneKeys()) != 0 {
		t.Errorf("after Leave:\n%s\nstill added: %v", calls(), b.doneKeys())
	}
}
