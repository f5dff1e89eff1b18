// Package vm runs the lab's cluster tests inside Debian's stock kernel:
// it fetches and caches the kernel package with apt, builds a small
// initramfs around busybox, boots the kernel under qemu with this machine's
// file system shared read-only over 9p (plus one writable results
// directory), and reads back every test's result. `make vmtest` drives it
// through lab/cmd/weftvm.
//
// The kernel of the lab machines has no WireGuard; Debian's has it as a
// module. This tier is where weft's kernel WireGuard path, and every
// backend on a distribution kernel, is tested.
package vm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KernelMeta is the Debian package that always depends on the current
// stock kernel image of the release.
const KernelMeta = "linux-image-amd64"

// Kernel is an unpacked Debian kernel package.
type Kernel struct {
	// Version is the release (uname -r), e.g. 6.1.0-56-amd64.
	Version string
	// Vmlinuz is the kernel image to boot.
	Vmlinuz string
	// Root is where the package was unpacked: Root/lib/modules/Version
	// holds the modules with a modules.dep made by depmod.
	Root string
}

// ModulesDir is the kernel's module tree.
func (k Kernel) ModulesDir() string { return filepath.Join(k.Root, "lib", "modules", k.Version) }

// run runs a command and returns its output, or an error that carries it.
func run(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// imagePackage asks apt which kernel image package KernelMeta depends on.
func imagePackage() (string, error) {
	out, err := run("", "apt-cache", "depends", KernelMeta)
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s names no linux-image package:\n%s", KernelMeta, out)
}

// FetchKernel returns Debian's current stock kernel, unpacked under cache.
// The package is fetched with apt-get download (no install: the machine's
// own kernel and /boot are untouched) the first time, and reused after.
// Every error says what is missing and how to get it.
func FetchKernel(cache string) (Kernel, error) {
	for _, tool := range []string{"apt-cache", "apt-get", "dpkg", "depmod"} {
		if _, err := exec.LookPath(tool); err != nil {
			hint := "the VM tier fetches Debian's kernel with apt and unpacks it with dpkg"
			if tool == "depmod" {
				hint = "install Debian's kmod (make deps does)"
			}
			return Kernel{}, fmt.Errorf("%s not found: %s", tool, hint)
		}
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return Kernel{}, err
	}
	pkg, deb, err := download(cache, false)
	if err != nil {
		// Package lists missing, or stale (naming a kernel the mirror
		// has dropped): update them once and try again.
		if _, uerr := run("", "apt-get", "update", "-qq"); uerr != nil {
			return Kernel{}, fmt.Errorf("%v (apt-get update also failed: %v)", err, uerr)
		}
		if pkg, deb, err = download(cache, true); err != nil {
			return Kernel{}, err
		}
	}
	version := strings.TrimPrefix(pkg, "linux-image-")
	k := Kernel{Version: version, Root: filepath.Join(cache, pkg)}
	k.Vmlinuz = filepath.Join(k.Root, "boot", "vmlinuz-"+version)
	done := filepath.Join(k.Root, ".unpacked")
	if _, err := os.Stat(done); err == nil {
		return k, nil
	}
	os.RemoveAll(k.Root)
	if _, err := run("", "dpkg", "-x", deb, k.Root); err != nil {
		return Kernel{}, fmt.Errorf("unpacking %s: %w", deb, err)
	}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return Kernel{}, fmt.Errorf("%s holds no kernel image: %w", deb, err)
	}
	if _, err := run("", "depmod", "-b", k.Root, version); err != nil {
		return Kernel{}, fmt.Errorf("indexing the modules of %s: %w", pkg, err)
	}
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		return Kernel{}, err
	}
	return k, nil
}

// download finds the kernel image package and its .deb in cache, fetching
// it when it is not there yet (or always, after an apt-get update: fresh).
func download(cache string, fresh bool) (pkg, deb string, err error) {
	if pkg, err = imagePackage(); err != nil {
		return "", "", fmt.Errorf("finding Debian's kernel package: %w", err)
	}
	debs, _ := filepath.Glob(filepath.Join(cache, pkg+"_*.deb"))
	if len(debs) > 0 && !fresh {
		return pkg, deb, nil
	}
	// apt's sandbox user cannot write to root's cache: download as root.
	if _, err := run(cache, "apt-get", "download", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return "", "", fmt.Errorf("downloading Debian's kernel package %s (needs Debian's apt sources reachable): %w", pkg, err)
	}
	if debs, _ = filepath.Glob(filepath.Join(cache, pkg+"_*.deb")); len(debs) == 0 {
		return "", "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, cache)
	}
	return pkg, debs[len(debs)-1], nil
}

// ModuleClosure lists the module files (relative to the kernel's module
// tree) that loading names needs, dependencies first, from modules.dep.
func (k Kernel) ModuleClosure(names ...string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(k.ModulesDir(), "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[file] = strings.Fields(rest)
		base := strings.TrimSuffix(filepath.Base(file), ".ko")
		byName[strings.ReplaceAll(base, "-", "_")] = file
	}
	var order []string
	seen := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if seen[file] {
			return
		}
		seen[file] = true
		// modules.dep lists every dependency, nearest last.
		for i := len(deps[file]) - 1; i >= 0; i-- {
			visit(deps[file][i])
		}
		order = append(order, file)
	}
	for _, name := range names {
		file, ok := byName[strings.ReplaceAll(name, "-", "_")]
		if !ok {
			return nil, fmt.Errorf("kernel %s has no module %s", k.Version, name)
		}
		visit(file)
	}
	if len(order) == 0 {
		return nil, errors.New("no modules asked for")
	}
	return order, nil
}
