// Command weftvm is weft's VM tier (make vmtest): it boots Debian's stock
// kernel under qemu and runs the lab's cluster tests inside it, on the
// kernel's own WireGuard. The VM sees this machine's files read-only; the
// test binary, weftd, weftctl and wireguard-go are built here first. Each
// test's result and time come back out; any failure, skip or a VM that
// stops early fails the run. A missing qemu or kernel package fails it
// too, with what is missing: the tier never passes by skipping.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lab/vm"
)

// patterns are flag.Value for a repeatable -run.
type patterns []string

func (p *patterns) String() string     { return strings.Join(*p, " ") }
func (p *patterns) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	var runs patterns
	cache := flag.String("cache", "/var/cache/weft-vm", "where Debian's kernel package is kept between runs, and each run's files")
	repo := flag.String("repo", ".", "the weft repository")
	busybox := flag.String("busybox", "/bin/busybox", "a statically linked busybox for the initramfs")
	accel := flag.String("accel", "tcg", "tcg, or kvm (nested KVM aborts or hangs on some machines, so it is asked for, never guessed)")
	cpus := flag.Int("smp", 2, "virtual CPUs")
	memory := flag.String("m", "3G", "VM memory")
	timeout := flag.Duration("timeout", 14*time.Minute, "the whole VM run, boot to power-off")
	flag.Var(&runs, "run", "a -test.run pattern for the lab tests, run by its own invocation (repeatable)")
	flag.Parse()
	if len(runs) == 0 {
		fmt.Fprintln(os.Stderr, "weftvm: give at least one -run pattern")
		os.Exit(2)
	}
	if *accel != "tcg" && *accel != "kvm" {
		fmt.Fprintf(os.Stderr, "weftvm: -accel %q is not tcg or kvm\n", *accel)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	tests, err := run(ctx, *cache, *repo, *busybox, *accel, *cpus, *memory, *timeout, runs)
	fmt.Printf("\nweftvm: %d tests in the VM (%s, wall time %s):\n", len(tests), *accel, time.Since(start).Round(time.Second))
	for _, t := range tests {
		fmt.Printf("  %-4s %8s  %s\n", t.Status, t.Elapsed.Round(10*time.Millisecond), t.Name)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weftvm: FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("weftvm: PASS")
}

func run(ctx context.Context, cache, repo, busybox, accel string, cpus int, memory string, timeout time.Duration, runs []string) ([]vm.Result, error) {
	repo, err := filepath.Abs(repo)
	if err != nil {
		return nil, err
	}
	if _, err := vm.Qemu(); err != nil { // before minutes of fetching and building
		return nil, err
	}
	kernel, err := vm.FetchKernel(cache)
	if err != nil {
		return nil, err
	}
	fmt.Printf("weftvm: kernel %s from Debian's %s (cached in %s)\n", kernel.Version, vm.KernelMeta, cache)
	dir, err := os.MkdirTemp(cache, "run-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin, results := filepath.Join(dir, "bin"), filepath.Join(dir, "results")
	for _, d := range []string{bin, results} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// Built here: under emulation the Go toolchain would take minutes.
	for _, b := range [][]string{
		{"test", "-c", "-o", filepath.Join(bin, "lab.test"), "./lab"},
		{"build", "-o", filepath.Join(bin, "weftd"), "./cmd/weftd"},
		{"build", "-o", filepath.Join(bin, "weftctl"), "./cmd/weftctl"},
		{"build", "-o", filepath.Join(bin, "wireguard-go"), "golang.zx2c4.com/wireguard"},
		{"build", "-o", filepath.Join(bin, "weft-cni"), "./cmd/weft-cni"},
	} {
		cmd := exec.CommandContext(ctx, "go", b...)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(b, " "), err, out)
		}
	}
	keep := []string{repo, dir}
	if st, err := os.Stat(filepath.Join(filepath.Dir(repo), "shared")); err == nil && st.IsDir() {
		keep = append(keep, filepath.Join(filepath.Dir(repo), "shared")) // ../shared, as the tests expect it
	}
	initScript, err := vm.InitScript(kernel, keep...)
	if err != nil {
		return nil, err
	}
	initrd := filepath.Join(dir, "initrd.gz")
	if err := (vm.Initramfs{Kernel: kernel, Busybox: busybox, Init: initScript}).Build(initrd); err != nil {
		return nil, err
	}
	r := vm.Run{
		Repo: repo, TestBinary: filepath.Join(bin, "lab.test"), Patterns: runs,
		Env:         []string{lab.PrebuiltEnv + "=" + bin, lab.ExpectKernelWireGuardEnv + "=1"},
		TestTimeout: timeout,
	}
	if err := os.WriteFile(filepath.Join(results, "run.sh"), []byte(r.Script()), 0o755); err != nil {
		return nil, err
	}
	m := vm.Machine{Kernel: kernel, Initrd: initrd, Results: results, Accel: accel, CPUs: cpus, Memory: memory, Timeout: timeout, Console: os.Stdout}
	fmt.Printf("weftvm: booting %s under qemu (%s, %d CPUs, %s); tests: %s\n", kernel.Version, accel, cpus, memory, strings.Join(runs, " "))
	if err := m.Boot(ctx); err != nil {
		tests, _ := vm.Verdict(results)
		return tests, err
	}
	return vm.Verdict(results)
}
