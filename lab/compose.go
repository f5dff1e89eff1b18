package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// WeftImage is the image deploy/compose/docker-compose.yml runs.
const WeftImage = "weftnet/weftd:latest"

// ImportWeftImage gives d the image the compose file names, built from
// what this machine has, since no registry (and so no base image for the
// Dockerfile) is reachable here: static weftd and weftctl, this machine's
// iptables with its libraries and extensions, and a static busybox for the
// config service's shell. The Dockerfile stays what users with a registry
// build.
func (l *Lab) ImportWeftImage(d *Dockerd) error {
	tar := filepath.Join(l.Dir, "weft-image.tar")
	if _, err := os.Stat(tar); err != nil {
		if err := l.buildWeftImage(tar); err != nil {
			return fmt.Errorf("building %s: %w", WeftImage, err)
		}
	}
	_, err := d.Docker("import", "-c", `ENTRYPOINT ["/usr/local/bin/weftd"]`, tar, WeftImage)
	return err
}

func (l *Lab) buildWeftImage(tar string) error {
	root := filepath.Join(l.Dir, "weft-image-root")
	repo, err := RepoFile(".")
	if err != nil {
		return err
	}
	for _, name := range []string{"weftd", "weftctl"} {
		cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(root, "usr/local/bin", name), "./cmd/"+name)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w: %s", name, err, out)
		}
	}
	// iptables as this machine runs it (nft or legacy), so the container
	// and the host agree on which rules they see.
	real, err := filepath.EvalSymlinks("/usr/sbin/iptables")
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	if err := copyFile(real, filepath.Join(root, real)); err != nil {
		return err
	}
	for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if err := os.Symlink(filepath.Base(real), filepath.Join(root, "usr/sbin", tool)); err != nil {
			return err
		}
	}
	libs, err := sharedLibraries(real)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := copyFile(lib, filepath.Join(root, lib)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/x86_64-linux-gnu"), 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("cp", "-a", "/usr/lib/x86_64-linux-gnu/xtables", filepath.Join(root, "usr/lib/x86_64-linux-gnu/")).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables extensions: %w: %s", err, out)
	}
	if err := copyFile("/bin/busybox", filepath.Join(root, "bin/busybox")); err != nil {
		return err
	}
	for _, applet := range []string{"sh", "printf", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			return err
		}
	}
	for _, dir := range []string{"tmp", "run", "etc", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			return err
		}
	}
	if out, err := exec.Command("tar", "-C", root, "-cf", tar, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("tar: %w: %s", err, out)
	}
	return nil
}

// sharedLibraries lists the libraries (and the loader) a binary loads, as
// ldd resolves them.
func sharedLibraries(binary string) ([]string, error) {
	out, err := exec.Command("ldd", binary).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", binary, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		}
	}
	return libs, nil
}

// copyFile copies src (following links) to dst, making dst's directory.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	info, err := os.Stat(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, info.Mode().Perm())
}

// Compose runs docker-compose on the shipped compose file against d, as
// project wl<lab id>, with env added to its environment.
func (l *Lab) Compose(d *Dockerd, env []string, args ...string) (string, error) {
	file, err := RepoFile("deploy/compose/docker-compose.yml")
	if err != nil {
		return "", err
	}
	full := append([]string{"-f", file, "-p", "wl" + l.ID}, args...)
	cmd := exec.Command("docker-compose", full...)
	cmd.Env = append(append(os.Environ(), "DOCKER_HOST=unix://"+d.Socket()), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker-compose %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
