package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// StartWeftd starts weftd in h's namespace with a notify socket for READY.
func (l *Lab) StartWeftd(h *Host, extra ...string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.notify == nil {
		sock := filepath.Join(h.Dir, "notify.sock")
		os.Remove(sock)
		conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
		if err != nil {
			return err
		}
		h.notify, h.ready = conn, make(chan struct{}, 16)
		go readNotify(conn, h.ready)
	}
	for len(h.ready) > 0 {
		<-h.ready // only a READY from this run counts
	}
	// Each host gets its own mount namespace with a private
	// /run/wireguard, as separate machines would: the UAPI socket
	// weft-wg.sock is then one per host, not one for the whole lab.
	if err := l.mountPoint("/run/wireguard"); err != nil {
		return err
	}
	args := []string{"netns", "exec", h.Name, "unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs weftlab /run/wireguard && exec "$0" "$@"`, l.opts.Weftd,
		"-etcd-endpoints", l.EtcdEndpoint(),
		"-subnet-file", h.SubnetFile(),
		"-wireguard-key-file", filepath.Join(h.Dir, "wg.key"),
		"-resync-interval", "2s",
		"-log-level", "debug"}
	args = append(append(args, l.opts.WeftdArgs...), extra...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(h.Dir, "notify.sock"))
	exited, err := startChild(cmd, h.LogPath())
	if err != nil {
		return fmt.Errorf("starting weftd on %s: %w", h.Name, err)
	}
	h.cmd, h.exited = cmd, exited
	return nil
}

// startChild starts cmd with its output appended to logPath, killed if the
// lab dies; the returned channel closes when it has exited.
func startChild(cmd *exec.Cmd, logPath string) (chan struct{}, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	return done, nil
}

func readNotify(conn *net.UnixConn, ready chan<- struct{}) {
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			select {
			case ready <- struct{}{}:
			default:
			}
		}
	}
}

// HostExec runs a command on h as weftd sees the host: in its network
// namespace and its private mount namespace (for `wg show`).
func (l *Lab) HostExec(h *Host, args ...string) (string, error) {
	pid := l.WeftdPID(h)
	if pid == 0 {
		return "", fmt.Errorf("weftd on %s is not running", h.Name)
	}
	// -r: the target's root directory. Entering a mount namespace
	// otherwise starts at the namespace's own root, which in the VM tier
	// (whose tests run chrooted into the machine's files) is the
	// initramfs.
	full := append([]string{"-t", strconv.Itoa(pid), "-m", "-n", "-r"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: %s: %w: %s", h.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// WeftdPID is the pid of weftd on h, 0 when it is not running.
func (l *Lab) WeftdPID(h *Host) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd == nil {
		return 0
	}
	return h.cmd.Process.Pid
}

// StopWeftd signals weftd on h (SIGTERM for a clean stop, SIGKILL for a
// crash) and waits for it to exit.
func (l *Lab) StopWeftd(h *Host, sig syscall.Signal) {
	h.mu.Lock()
	cmd, exited := h.cmd, h.exited
	h.cmd = nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

// WaitReady waits for weftd on h to send READY=1, then reads its subnet.
func (l *Lab) WaitReady(ctx context.Context, h *Host) error {
	h.mu.Lock()
	exited := h.exited
	h.mu.Unlock()
	select {
	case <-h.ready:
	case <-exited:
		return fmt.Errorf("weftd on %s exited before READY; log:\n%s", h.Name, h.LogTail(20))
	case <-time.After(60 * time.Second):
		return fmt.Errorf("weftd on %s not READY after 60s; log:\n%s", h.Name, h.LogTail(20))
	case <-ctx.Done():
		return ctx.Err()
	}
	env, err := lease.ReadSubnetFile(h.SubnetFile())
	if err != nil {
		return err
	}
	h.Subnet, h.IPv6Subnet = env.Subnet, env.IPv6Subnet
	return nil
}

// SubnetFile is h's subnet.env.
func (h *Host) SubnetFile() string { return filepath.Join(h.Dir, "subnet.env") }

// LogPath is where h's weftd logs go.
func (h *Host) LogPath() string { return filepath.Join(h.Dir, "weftd.log") }

// LogTail returns the last n lines of h's weftd log.
func (h *Host) LogTail(n int) string {
	data, _ := os.ReadFile(h.LogPath())
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// ContainerIP is the address of h's container; invalid on an IPv6-only
// network.
func (h *Host) ContainerIP() netip.Addr {
	if !h.Subnet.IsValid() {
		return netip.Addr{}
	}
	return h.Subnet.Addr().Next().Next()
}

// ContainerIPv6 is the IPv6 address of h's container in a dual-stack lab,
// invalid otherwise.
func (h *Host) ContainerIPv6() netip.Addr {
	if !h.IPv6Subnet.IsValid() {
		return netip.Addr{}
	}
	return h.IPv6Subnet.Addr().Next().Next()
}

// AddContainer puts a container namespace behind a bridge on h, addressed
// from h's subnet as docker would with --bip=$FLANNEL_SUBNET.
func (l *Lab) AddContainer(h *Host) error {
	env, err := lease.ReadSubnetFile(h.SubnetFile())
	if err != nil {
		return err
	}
	if err := l.addNetns(h.Container); err != nil {
		return err
	}
	mtu := strconv.Itoa(env.MTU)
	cmds := [][]string{
		{"ip", "-n", h.Name, "link", "add", "cbr0", "mtu", mtu, "type", "bridge"},
		{"ip", "-n", h.Name, "link", "set", "cbr0", "up"},
		{"ip", "-n", h.Name, "link", "add", "vc0", "mtu", mtu, "type", "veth", "peer", "name", "eth0", "netns", h.Container},
		{"ip", "-n", h.Name, "link", "set", "vc0", "master", "cbr0", "up"},
		{"ip", "-n", h.Container, "link", "set", "eth0", "up"},
	}
	if env.Subnet.IsValid() { // none on an IPv6-only network
		bridgeIP := netip.PrefixFrom(env.Subnet.Addr().Next(), env.Subnet.Bits())
		cIP := netip.PrefixFrom(bridgeIP.Addr().Next(), env.Subnet.Bits())
		cmds = append(cmds,
			[]string{"ip", "-n", h.Name, "addr", "add", bridgeIP.String(), "dev", "cbr0"},
			[]string{"ip", "-n", h.Container, "addr", "add", cIP.String(), "dev", "eth0"},
			[]string{"ip", "-n", h.Container, "route", "add", "default", "via", bridgeIP.Addr().String()})
	}
	if env.IPv6Subnet.IsValid() {
		// As docker does with --ipv6 --fixed-cidr-v6: the bridge takes
		// FLANNEL_IPV6_SUBNET's first address, the container the next.
		bridge6 := netip.PrefixFrom(env.IPv6Subnet.Addr().Next(), env.IPv6Subnet.Bits())
		c6 := netip.PrefixFrom(bridge6.Addr().Next(), env.IPv6Subnet.Bits())
		cmds = append(cmds,
			[]string{"ip", "-n", h.Name, "addr", "add", bridge6.String(), "dev", "cbr0", "nodad"},
			[]string{"ip", "-n", h.Container, "addr", "add", c6.String(), "dev", "eth0", "nodad"},
			[]string{"ip", "-n", h.Container, "-6", "route", "add", "default", "via", bridge6.Addr().String()})
	}
	return RunAll(cmds...)
}

// Ping sends one ping from from's container to to's container, and in a
// dual-stack lab one to its IPv6 address too: both must answer.
func (l *Lab) Ping(from, to *Host) error {
	for _, addr := range to.containerIPs() {
		if err := pingAddr(from, addr); err != nil {
			return err
		}
	}
	return nil
}

// containerIPs are h's container's addresses: IPv4, then IPv6 in a
// dual-stack lab.
func (h *Host) containerIPs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range []netip.Addr{h.ContainerIP(), h.ContainerIPv6()} {
		if ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

// containerIP is h's container's address of a family (0 IPv4, 1 IPv6);
// invalid when it has none, which no ping reaches.
func (h *Host) containerIP(family int) netip.Addr {
	if ips := h.containerIPs(); family < len(ips) {
		return ips[family]
	}
	return netip.Addr{}
}

func pingAddr(from *Host, addr netip.Addr) error {
	_, err := Exec(from.Container, "ping", "-c", "1", "-W", "1", "-q", addr.String())
	return err
}

// PingMatrix pings every container from every other one and renders the
// result as a table, one per address family in a dual-stack lab; ok is
// true when every pair answered in every family. A pair gets three tries,
// so a host whose peers are still applying its lease is not failed.
func (l *Lab) PingMatrix() (table string, ok bool) {
	var b strings.Builder
	ok = true
	for family := range l.Hosts[0].containerIPs() {
		width := 14
		if l.Hosts[0].containerIP(family).Is6() {
			width = 24
		}
		if family > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%-*s", width, "from \\ to")
		for _, h := range l.Hosts {
			fmt.Fprintf(&b, "%-*s", width, h.containerIP(family))
		}
		b.WriteString("\n")
		for _, from := range l.Hosts {
			fmt.Fprintf(&b, "%-*s", width, from.containerIP(family))
			for _, to := range l.Hosts {
				cell := "-"
				if from != to {
					cell = "FAIL"
					for try := 0; try < 3 && cell == "FAIL"; try++ {
						if pingAddr(from, to.containerIP(family)) == nil {
							cell = "ok"
						}
					}
					if cell == "FAIL" {
						ok = false
					}
				}
				fmt.Fprintf(&b, "%-*s", width, cell)
			}
			b.WriteString("\n")
		}
	}
	return b.String(), ok
}

// HostTable renders host, subnet and public IP, one row each.
func (l *Lab) HostTable() string {
	var b strings.Builder
	row := "%-6s %-16s %-16s %-20s %-16s %-10s %s\n"
	fmt.Fprintf(&b, row, "HOST", "NAMESPACE", "PUBLIC IP", "SUBNET", "CONTAINER", "BACKEND", "ENCRYPTED")
	for _, h := range l.Hosts {
		backend, encrypted := l.hostBackend(h)
		if h.Subnet.IsValid() {
			fmt.Fprintf(&b, row, fmt.Sprintf("h%d", h.Index), h.Name, h.PublicIP, h.Subnet, h.ContainerIP(), backend, encrypted)
		}
		if h.IPv6Subnet.IsValid() {
			fmt.Fprintf(&b, row, fmt.Sprintf("h%d", h.Index), h.Name, h.PublicIPv6, h.IPv6Subnet, h.ContainerIPv6(), backend, encrypted)
		}
	}
	return b.String()
}

// hostBackend is the backend h's lease names, and whether its peers reach
// its containers encrypted (backends.Kind.Encrypted: only WireGuard).
func (l *Lab) hostBackend(h *Host) (backend, encrypted string) {
	rec, ok, err := l.Store().Get(context.Background(), lease.DualSubnetKey(h.Subnet, h.IPv6Subnet))
	if err != nil || !ok {
		return "?", "?"
	}
	own, err := lease.DecodeLease(rec.Key, rec.Value)
	if err != nil {
		return "?", "?"
	}
	backend = own.Attrs.Backend()
	if kind, _ := backends.Lookup(backend); kind.Encrypted {
		return backend, "yes"
	}
	return backend, "no (in clear)"
}
