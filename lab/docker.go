package lab

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Docker's binaries, from Debian's docker.io (the lab never uses another
// docker client a machine may have on its PATH).
const (
	dockerdBin = "/usr/sbin/dockerd"
	dockerBin  = "/usr/bin/docker"
	// BusyboxImage is the image the lab's containers run: a static busybox
	// imported from a directory (no registry is needed).
	BusyboxImage = "weftlab/busybox:latest"
)

// How a Dockerd gets weft's options: DockerOptsEnv and DockerOptsJSON as
// `weftctl docker-opts -format` names them; DockerOptsNone for a docker
// that runs before weft does (the compose service's host, at first).
const (
	DockerOptsEnv  = "env"
	DockerOptsJSON = "daemon-json"
	DockerOptsNone = "none"
)

// Dockerd is the Docker engine of one lab host: its own dockerd (with the
// containerd it starts), data and exec roots and API socket, in the host's
// network namespace and a private mount namespace where /run/flannel,
// /run/wireguard and /var/lib/weft are the host's own (bound from
// <host dir>/root, as on a machine of its own). It is started the way
// weft's systemd units start docker.
type Dockerd struct {
	Host *Host
	// Dir holds its roots, socket, logs and option files.
	Dir string
	// Format is how the options reached dockerd: DockerOptsEnv (the
	// drop-in's $DOCKER_NETWORK_OPTIONS), DockerOptsJSON (--config-file)
	// or DockerOptsNone.
	Format string
	// SubnetFile is the weft subnet file docker's options come from.
	SubnetFile string
	// Args is dockerd's command line as last started.
	Args []string

	lab    *Lab
	cmd    *exec.Cmd
	exited chan struct{}
}

// Socket is the dockerd's API socket.
func (d *Dockerd) Socket() string { return filepath.Join(d.Dir, "docker.sock") }

// RepoFile returns the path of a file of this repository (found from the
// working directory up to go.mod), such as the shipped systemd units.
func RepoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, rel), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory, so no %s", rel)
		}
		dir = parent
	}
}

// unitLine returns the words of the last non-empty `key=` line of a
// shipped unit file (a drop-in resets ExecStart with an empty one first).
func unitLine(rel, key string) ([]string, error) {
	path, err := RepoFile(rel)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var words []string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), key+"="); ok && v != "" {
			words = strings.Fields(v)
		}
	}
	if words == nil {
		return nil, fmt.Errorf("%s has no %s= line", rel, key)
	}
	return words, nil
}

// envValue reads one variable from a file of KEY="value" lines, as
// systemd's EnvironmentFile= does for the values weftctl writes.
func envValue(path, key string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			return strings.Trim(v, `"`), nil
		}
	}
	return "", fmt.Errorf("%s has no %s", path, key)
}

// dockerOptions runs weftctl docker-opts as weftd.service's ExecStartPost
// does, on h's subnet file, and returns dockerd's command line as the
// docker.service drop-in builds it. In the daemon-json format the options
// go to a daemon.json handed over with --config-file instead.
func (d *Dockerd) dockerOptions(weftctl string) ([]string, error) {
	post, err := unitLine("deploy/systemd/weftd.service", "ExecStartPost")
	if err != nil {
		return nil, err
	}
	start, err := unitLine("deploy/systemd/docker.service.d/weft.conf", "ExecStart")
	if err != nil {
		return nil, err
	}
	// ExecStartPost=/usr/local/bin/weftctl docker-opts -k KEY -d FILE: the
	// lab's weftctl, this host's subnet file and an options file of its own.
	args := []string{post[1], "-f", d.SubnetFile}
	var key, optsFile string
	for i := 2; i < len(post); i++ {
		switch post[i] {
		case "-d":
			i++
			optsFile = filepath.Join(d.Dir, filepath.Base(post[i]))
		case "-k":
			key = post[i+1]
			args = append(args, post[i])
		default:
			args = append(args, post[i])
		}
	}
	if d.Format == DockerOptsJSON {
		optsFile = filepath.Join(d.Dir, "daemon.json")
		args = append(args, "-format", DockerOptsJSON)
	}
	args = append(args, "-d", optsFile)
	if d.Format != DockerOptsNone {
		if out, err := exec.Command(weftctl, args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("weftctl %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	var netOpts []string
	switch d.Format {
	case DockerOptsNone:
	case DockerOptsJSON:
		netOpts = []string{"--config-file", optsFile}
	default:
		v, err := envValue(optsFile, key)
		if err != nil {
			return nil, err
		}
		netOpts = strings.Fields(v)
	}
	// ExecStart=dockerd $DOCKER_NETWORK_OPTIONS -H fd:// --containerd=...
	var cmdline []string
	for i := 1; i < len(start); i++ {
		w := start[i]
		switch {
		case w == "$"+key:
			cmdline = append(cmdline, netOpts...)
		case w == "-H":
			i++ // fd:// is systemd's socket activation: the lab listens itself
			cmdline = append(cmdline, "-H", "unix://"+d.Socket())
		case strings.HasPrefix(w, "--containerd="):
			// The lab has no system containerd: each dockerd starts its own.
		default:
			cmdline = append(cmdline, w)
		}
	}
	return append(cmdline, "--data-root", filepath.Join(d.Dir, "data"), "--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "docker.pid")), nil
}

// StartDockerd starts a dockerd on h with the options weftctl derives from
// h's subnet file (format: DockerOptsEnv or DockerOptsJSON), and imports
// the busybox image into it. Start it after weftd is READY, as systemd does.
func (l *Lab) StartDockerd(h *Host, weftctl, format string) (*Dockerd, error) {
	d := &Dockerd{Host: h, Dir: filepath.Join(h.Dir, "docker"), Format: format, SubnetFile: h.SubnetFile(), lab: l}
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return nil, err
	}
	l.dockerds = append(l.dockerds, d)
	if err := d.start(weftctl); err != nil {
		return d, err
	}
	tar, err := l.busyboxTar()
	if err != nil {
		return d, err
	}
	if _, err := d.Docker("import", tar, BusyboxImage); err != nil {
		return d, err
	}
	return d, nil
}

func (d *Dockerd) start(weftctl string) error {
	args, err := d.dockerOptions(weftctl)
	if err != nil {
		return err
	}
	d.Args = args
	logFile, err := os.OpenFile(filepath.Join(d.Dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	// These are the host's own in the dockerd's mount namespace, as on a
	// machine of its own: what weftd in a compose container reads and
	// writes, kept across dockerd restarts.
	mounts := ""
	for _, dir := range []string{"/run/flannel", "/run/wireguard", "/var/lib/weft"} {
		own := d.Host.RootPath(dir)
		if err := os.MkdirAll(own, 0o755); err != nil {
			return err
		}
		if err := d.lab.mountPoint(dir); err != nil {
			return err
		}
		mounts += fmt.Sprintf("mount --bind %s %s && ", own, dir)
	}
	// nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup
	// mounts dockerd needs.
	full := append([]string{"--net=/run/netns/" + d.Host.Name, "unshare", "--mount", "--propagation", "private",
		"sh", "-c", mounts + `exec "$0" "$@"`, dockerdBin}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting dockerd on %s: %w", d.Host.Name, err)
	}
	d.cmd, d.exited = cmd, make(chan struct{})
	exited := d.exited
	go func() { cmd.Wait(); close(exited) }()
	err = waitUntil(context.Background(), 60*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		_, err := d.Docker("version", "--format", "{{.Server.Version}}")
		return err == nil
	})
	select {
	case <-exited:
		return fmt.Errorf("dockerd on %s exited at start; see %s", d.Host.Name, filepath.Join(d.Dir, "dockerd.log"))
	default:
	}
	return err
}

// RootPath is where path of h's own filesystem lives on the machine: the
// directories a Dockerd binds over /run/flannel, /run/wireguard and
// /var/lib/weft.
func (h *Host) RootPath(path string) string { return filepath.Join(h.Dir, "root", path) }

// Docker runs the docker client against this dockerd.
func (d *Dockerd) Docker(args ...string) (string, error) {
	out, err := exec.Command(dockerBin, append([]string{"-H", "unix://" + d.Socket()}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker on %s: %s: %w: %s", d.Host.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// PID is dockerd's pid (0 when stopped), for nsenter into its mount
// namespace.
func (d *Dockerd) PID() int {
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Stop stops dockerd with SIGTERM, as `systemctl stop docker` does; its
// containers stop with it.
func (d *Dockerd) Stop() {
	if d.cmd == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// Restart stops dockerd and starts it again with options derived anew
// from the subnet file, as `systemctl restart docker` does.
func (d *Dockerd) Restart(weftctl string) error {
	d.Stop()
	return d.start(weftctl)
}

// Container is a `docker run` container of a lab host.
type Container struct {
	Name string
	IP   netip.Addr
	// Prefix is the address with the bridge network's length.
	Prefix netip.Prefix
	MTU    int
	PID    int
	// IPv6 is the container's IPv6 address when dockerd runs with
	// --ipv6 (a dual-stack network's FLANNEL_IPV6_SUBNET); else invalid.
	IPv6 netip.Addr
}

// Run starts a busybox container that sleeps (restarted with dockerd,
// as a service container would be) and returns it.
func (d *Dockerd) Run(name string) (Container, error) {
	if _, err := d.Docker("run", "-d", "--restart=always", "--stop-timeout=1", "--name", name, BusyboxImage, "sleep", "100000"); err != nil {
		return Container{}, err
	}
	return d.Inspect(name)
}

// Inspect returns a running container's address, MTU and pid.
func (d *Dockerd) Inspect(name string) (Container, error) {
	out, err := d.Docker("inspect", "-f", "{{.State.Pid}} {{.NetworkSettings.IPAddress}}/{{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.GlobalIPv6Address}}", name)
	if err != nil {
		return Container{}, err
	}
	f := strings.Fields(out)
	c := Container{Name: name}
	if len(f) == 3 {
		if c.IPv6, err = netip.ParseAddr(f[2]); err != nil {
			return c, fmt.Errorf("docker inspect %s: IPv6 address %q", name, f[2])
		}
		f = f[:2]
	}
	if len(f) != 2 {
		return Container{}, fmt.Errorf("docker inspect %s: %q", name, out)
	}
	c.PID, _ = strconv.Atoi(f[0])
	if c.Prefix, err = netip.ParsePrefix(f[1]); err != nil {
		return c, fmt.Errorf("container %s has no address (%q)", name, out)
	}
	c.IP = c.Prefix.Addr()
	mtu, err := d.Docker("exec", name, "cat", "/sys/class/net/eth0/mtu")
	if err != nil {
		return c, err
	}
	c.MTU, err = strconv.Atoi(mtu)
	return c, err
}

// Ping pings addr once from inside a container, as its programs would.
func (d *Dockerd) Ping(c Container, addr netip.Addr) error {
	_, err := d.Docker("exec", c.Name, "ping", "-c", "1", "-W", "1", addr.String())
	return err
}

// PingFromNetns pings addr once from the container's network namespace,
// entered from the machine: the same path a container's packet takes,
// without docker exec's round of dockerd, containerd and runc (about a
// third of a second of CPU each, which the many pairs of a ping matrix
// multiply). Dockerd.Ping remains for what a program inside sees.
func (c Container) PingFromNetns(addr netip.Addr) error {
	return exec.Command("nsenter", "--net=/proc/"+strconv.Itoa(c.PID)+"/ns/net", "ping", "-c", "1", "-W", "1", "-q", addr.String()).Run()
}

// remove stops every container and the dockerd and deletes its roots,
// unmounting whatever it left mounted.
func (d *Dockerd) remove() {
	if d.cmd != nil {
		if ids, err := d.Docker("ps", "-aq"); err == nil && ids != "" {
			d.Docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
	}
	d.Stop()
	unmountUnder(d.Dir)
	os.RemoveAll(d.Dir)
}

// unmountUnder lazily unmounts every mount below dir, deepest first.
func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			points = append(points, f[1])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// busyboxTar makes (once per lab) a tar of a root directory holding a
// static busybox and the applets the tests use, for `docker import`.
func (l *Lab) busyboxTar() (string, error) {
	tar := filepath.Join(l.Dir, "busybox.tar")
	if _, err := os.Stat(tar); err == nil {
		return tar, nil
	}
	root := filepath.Join(l.Dir, "busybox-root")
	bin := filepath.Join(root, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("static busybox (Debian's busybox-static; make test installs it): %w", err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		return "", err
	}
	for _, applet := range []string{"sh", "ping", "sleep", "cat", "ip", "nc", "ifconfig", "wget", "echo"} {
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			return "", err
		}
	}
	if out, err := exec.Command("tar", "-C", root, "-cf", tar, ".").CombinedOutput(); err != nil {
		return "", fmt.Errorf("tar: %w: %s", err, out)
	}
	return tar, nil
}

// DockerHost is a lab host with its dockerd and its `docker run` containers.
type DockerHost struct {
	*Host
	Docker     *Dockerd
	Containers []Container
}

// DockerPingMatrix pings every container from every container on the other
// hosts (docker exec ping) and renders the result as a table; ok is true
// when every pair answered.
func DockerPingMatrix(hosts []*DockerHost) (table string, ok bool) {
	var all []Container
	owner := map[string]*DockerHost{}
	for _, h := range hosts {
		for _, c := range h.Containers {
			all = append(all, c)
			owner[c.Name] = h
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-22s", "from \\ to")
	for _, c := range all {
		fmt.Fprintf(&b, "%-14s", c.IP)
	}
	b.WriteString("\n")
	ok = true
	for _, from := range all {
		fmt.Fprintf(&b, "%-22s", from.Name+" "+from.IP.String())
		for _, to := range all {
			cell := "-"
			if owner[from.Name] != owner[to.Name] {
				cell = "ok"
				if err := owner[from.Name].Docker.Ping(from, to.IP); err != nil {
					cell, ok = "FAIL", false
				}
			}
			fmt.Fprintf(&b, "%-14s", cell)
		}
		b.WriteString("\n")
	}
	return b.String(), ok
}
