package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// PodmanImage is the busybox image imported into every lab podman.
const PodmanImage = "weft-busybox"

// Podman is Debian's podman (4.3, CNI) on one lab host, as on a machine of
// its own: a holder process keeps a mount namespace in the host's network
// namespace where the machine's /etc/cni/net.d, /var/lib/cni, /run/netns
// and /dev/shm are the host's own (lab hosts share the machine's
// filesystem: podman and CNI must never write the machine's copies), and
// every podman command runs there with its own --root, --runroot and
// containers.conf (CONTAINERS_CONF), which forces the CNI network backend,
// finds weft's plugin in a directory of the lab's, and keeps containers'
// rlimits within this machine's hard limits (runc cannot raise them).
type Podman struct {
	Host *Host
	Dir  string
	// ConfDir is the host's CNI configuration directory (the machine's
	// /etc/cni/net.d, in the holder's mount namespace).
	ConfDir string
	holder  *exec.Cmd
	exited  chan struct{}
}

// StartPodman readies podman on h with the CNI plugin binary plugin,
// installed as weft and as flannel, and imports the busybox image.
func (l *Lab) StartPodman(h *Host, plugin string) (*Podman, error) {
	p := &Podman{Host: h, Dir: filepath.Join(h.Dir, "podman")}
	p.ConfDir = filepath.Join(p.Dir, "etc-cni-net.d")
	l.podmans = append(l.podmans, p)
	bin := filepath.Join(p.Dir, "cni-bin")
	for _, dir := range []string{bin, p.ConfDir, filepath.Join(p.Dir, "var-lib-cni"), filepath.Join(p.Dir, "tmp")} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return p, err
		}
	}
	for _, name := range []string{"weft", "flannel"} {
		if err := os.Symlink(plugin, filepath.Join(bin, name)); err != nil {
			return p, err
		}
	}
	var nofile, nproc syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile)
	syscall.Getrlimit(6 /* RLIMIT_NPROC */, &nproc)
	// runc refused limits at this machine's hard limits too (EPERM for
	// nproc): a container needs few.
	limit := min(4096, nofile.Max, nproc.Max)
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=%d:%d", "nproc=%d:%d"]
log_driver = "k8s-file"
[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = "/etc/cni/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
`, limit, limit, limit, limit, bin, filepath.Join(p.Dir, "events.log"), filepath.Join(p.Dir, "tmp"))
	if err := os.WriteFile(filepath.Join(p.Dir, "containers.conf"), []byte(conf), 0o644); err != nil {
		return p, err
	}
	mounts := []string{"mount -t tmpfs weftlab-shm /dev/shm", "mount -t tmpfs weftlab-netns /run/netns",
		fmt.Sprintf("mount --bind %s /var/lib/cni", filepath.Join(p.Dir, "var-lib-cni")),
		fmt.Sprintf("mount --bind %s /etc/cni/net.d", p.ConfDir)}
	for _, dir := range []string{"/var/lib/cni", "/etc/cni/net.d", "/run/netns"} {
		if err := l.mountPoint(dir); err != nil {
			return p, err
		}
	}
	p.holder = exec.Command("nsenter", "--net=/run/netns/"+h.Name, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", strings.Join(mounts, " && ")+" && exec sleep infinity")
	exited, err := startChild(p.holder, filepath.Join(p.Dir, "holder.log"))
	if err != nil {
		return p, err
	}
	p.exited = exited
	// The holder is ready once its mounts are in place.
	if err := waitUntil(context.Background(), 10*time.Second, func() bool {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", p.holder.Process.Pid))
		return strings.Contains(string(data), " /etc/cni/net.d ")
	}); err != nil {
		return p, fmt.Errorf("podman's mount namespace on %s: %w (see %s)", h.Name, err, filepath.Join(p.Dir, "holder.log"))
	}
	if backend, err := p.Podman("info", "--format", "{{.Host.NetworkBackend}}"); err != nil || backend != "cni" {
		return p, fmt.Errorf("podman on %s uses network backend %q (%v), want cni", h.Name, backend, err)
	}
	tar, err := l.busyboxTar()
	if err != nil {
		return p, err
	}
	if _, err := p.Podman("import", tar, PodmanImage); err != nil {
		return p, err
	}
	return p, nil
}

// WriteConflist puts a CNI network configuration list in the host's
// configuration directory.
func (p *Podman) WriteConflist(name, conflist string) error {
	return os.WriteFile(filepath.Join(p.ConfDir, name+".conflist"), []byte(conflist), 0o644)
}

// Podman runs a podman command on the host.
func (p *Podman) Podman(args ...string) (string, error) {
	full := append([]string{"-t", fmt.Sprint(p.holder.Process.Pid), "-m", "-n", "podman",
		"--root", filepath.Join(p.Dir, "root"), "--runroot", filepath.Join(p.Dir, "runroot"), "--storage-driver", "vfs"}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(p.Dir, "containers.conf"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman on %s: %s: %w: %s", p.Host.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// remove removes every container (their CNI DEL runs) and stops the
// holder, whose mount namespace goes with it.
func (p *Podman) remove() {
	if p.holder == nil || p.holder.Process == nil {
		return
	}
	p.Podman("rm", "--all", "--force", "--time", "0")
	p.holder.Process.Kill()
	<-p.exited
}
