package vm

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"time"
)

//go:embed init.sh
var initScript string

// preloadModules are loaded before the tests start: the TUN driver (its
// /dev/net/tun node exists only once it is loaded), WireGuard and ipip
// (with tunnel4 and ip_tunnel, which modprobe loads first), so a missing
// module shows at boot and not as a skipped test.
var preloadModules = []string{"tun", "wireguard", "ipip"}

// InitScript renders /init for kernel k. keep are directories of this
// machine the tests need (the repository, the built binaries) that must
// stay visible even when they lie under /tmp, /var/tmp or /run, which the
// VM covers with a tmpfs of its own.
func InitScript(k Kernel, keep ...string) ([]byte, error) {
	for _, p := range keep {
		if !filepath.IsAbs(p) || strings.ContainsAny(p, " \t\n'\"$`\\") {
			return nil, fmt.Errorf("the VM tier needs a plain absolute path, not %q (move it, or clone the repository elsewhere)", p)
		}
	}
	t, err := template.New("init").Parse(initScript)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err = t.Execute(&b, map[string]string{
		"Version":     k.Version,
		"ModulesDir":  k.ModulesDir(),
		"BootModules": strings.Join(bootModules, " "),
		"Preload":     strings.Join(preloadModules, " "),
		"Keep":        strings.Join(keep, " "),
	})
	return b.Bytes(), err
}

// Run is one test run in the VM.
type Run struct {
	// Repo is the repository root (the tests run in Repo/lab).
	Repo string
	// TestBinary is the lab's compiled test binary.
	TestBinary string
	// Patterns are -test.run patterns, each run by its own invocation.
	Patterns []string
	// Env is extra environment for the tests.
	Env []string
	// TestTimeout bounds each invocation (-test.timeout).
	TestTimeout time.Duration
}

// Script is the bash script the VM runs: each pattern in turn, every line
// of output to the console and to test.log, the worst exit status to rc.
func (r Run) Script() string {
	var b strings.Builder
	b.WriteString("# written by weftvm: the tests the VM runs\nset -u\n")
	b.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp\n")
	for _, e := range r.Env {
		fmt.Fprintf(&b, "export %s\n", shellQuote(e))
	}
	fmt.Fprintf(&b, "cd %s || { echo 1 > /run/weft-vm/rc; exit 1; }\nrc=0\n", shellQuote(filepath.Join(r.Repo, "lab")))
	for _, p := range r.Patterns {
		fmt.Fprintf(&b, "echo %s\n", shellQuote("weft-vm: -run "+p))
		fmt.Fprintf(&b, "%s -test.v -test.count=1 -test.timeout=%s -test.run %s 2>&1 | tee -a /run/weft-vm/test.log\n",
			shellQuote(r.TestBinary), r.TestTimeout, shellQuote(p))
		b.WriteString("s=${PIPESTATUS[0]}; [ \"$s\" -ne 0 ] && rc=$s\n")
	}
	b.WriteString("echo $rc > /run/weft-vm/rc\n")
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Machine is how qemu boots the kernel.
type Machine struct {
	Kernel Kernel
	Initrd string
	// Results is the writable directory the VM sees at /run/weft-vm.
	Results string
	// Accel is tcg or kvm.
	Accel   string
	CPUs    int
	Memory  string // qemu -m, e.g. 3G
	Timeout time.Duration
	// Console receives the VM's serial console (the tests' output).
	Console io.Writer
}

// Qemu finds qemu-system-x86_64, or says which package brings it.
func Qemu() (string, error) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", errors.New("qemu-system-x86_64 not found: the VM tier needs Debian's qemu-system-x86 (make deps installs it)")
	}
	return qemu, nil
}

// Boot runs the VM until it powers off. The VM's own verdict is in
// Results (rc and test.log); Boot fails only when qemu does, or on
// timeout.
func (m Machine) Boot(ctx context.Context) error {
	qemu, err := Qemu()
	if err != nil {
		return err
	}
	if m.Accel == "kvm" {
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return fmt.Errorf("KVM asked for but /dev/kvm is missing (%v); leave VM_ACCEL unset for TCG", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	args := []string{
		"-accel", m.Accel, "-cpu", "max", "-smp", strconv.Itoa(m.CPUs), "-m", m.Memory,
		"-display", "none", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", m.Kernel.Vmlinuz, "-initrd", m.Initrd,
		"-append", "console=ttyS0 quiet panic=-1 loglevel=3",
		"-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path=" + m.Results + ",mount_tag=results,security_model=none",
	}
	if m.Accel == "kvm" {
		args[3] = "host"
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdout, cmd.Stderr = m.Console, m.Console
	err = cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("the VM did not finish within %s (killed)", m.Timeout)
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// Result is one test (or subtest) as go test -v reported it.
type Result struct {
	Name    string
	Status  string // PASS, FAIL or SKIP
	Elapsed time.Duration
}

var resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)

// ParseResults reads every --- PASS/FAIL/SKIP line of go test -v output.
func ParseResults(log []byte) []Result {
	var out []Result
	for _, line := range strings.Split(string(log), "\n") {
		m := resultLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		secs, _ := strconv.ParseFloat(m[3], 64)
		out = append(out, Result{Name: m[2], Status: m[1], Elapsed: time.Duration(secs * float64(time.Second))})
	}
	return out
}

// Verdict judges a finished run from the results directory: the exit
// status the VM wrote and the tests' lines. A run passes only when the
// status is 0, some test ran, and none failed or was skipped (a test
// skipped in the VM tested nothing there).
func Verdict(results string) ([]Result, error) {
	log, _ := os.ReadFile(filepath.Join(results, "test.log"))
	tests := ParseResults(log)
	raw, err := os.ReadFile(filepath.Join(results, "rc"))
	if err != nil {
		return tests, errors.New("the VM wrote no exit status: it stopped before the tests finished (see its console above)")
	}
	var bad []string
	for _, t := range tests {
		if t.Status != "PASS" {
			bad = append(bad, t.Status+" "+t.Name)
		}
	}
	switch rc := strings.TrimSpace(string(raw)); {
	case len(bad) > 0:
		return tests, fmt.Errorf("in the VM: %s", strings.Join(bad, ", "))
	case rc != "0":
		return tests, fmt.Errorf("the tests in the VM exited with status %s", rc)
	case len(tests) == 0:
		return tests, errors.New("no test ran in the VM")
	}
	return tests, nil
}
