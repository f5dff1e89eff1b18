package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// podmanConflist is the conflist a lab host's podman reads: weft's plugin
// (type weft, or flannel for a flannel conflist) on the host's subnet
// file, and portmap for -p.
func podmanConflist(kind string, h *Host) string {
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weft","plugins":[
  {"type":%q,"subnetFile":%q,"capabilities":{"ips":true}},
  {"type":"portmap","capabilities":{"portMappings":true}}]}`, kind, h.SubnetFile())
}

// podmanContainer is a container a test started, as podman inspect says.
type podmanContainer struct {
	name      string
	pid       int
	ip, ip6   netip.Addr
	host      *Host
	inspected string
}

// runContainer runs a busybox container on the weft network and reads
// its addresses and pid.
func runContainer(t *testing.T, p *Podman, name string, extra ...string) *podmanContainer {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--network", "weft", "--pull=never"}, extra...)
	args = append(args, PodmanImage, "sleep", "1000")
	if _, err := p.Podman(args...); err != nil {
		t.Fatal(err)
	}
	out, err := p.Podman("inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.Networks.weft.IPAddress}} "+
		"{{.NetworkSettings.Networks.weft.GlobalIPv6Address}}", name)
	if err != nil {
		t.Fatal(err)
	}
	c := &podmanContainer{name: name, host: p.Host, inspected: out}
	var ip, ip6 string
	fmt.Sscan(out, &c.pid, &ip, &ip6)
	c.ip, _ = netip.ParseAddr(ip)
	c.ip6, _ = netip.ParseAddr(ip6)
	if c.pid == 0 || !c.ip.IsValid() {
		t.Fatalf("container %s on %s: inspect says %q", name, p.Host.Name, out)
	}
	return c
}

// in runs a command of the machine's static busybox in the container's
// network namespace.
func (c *podmanContainer) in(args ...string) (string, error) {
	full := append([]string{"-t", fmt.Sprint(c.pid), "-n", "/bin/busybox"}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s on %s: %s: %w: %s", c.name, c.host.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (c *podmanContainer) ping(to netip.Addr) error {
	cmd := "ping"
	if to.Is6() {
		cmd = "ping6"
	}
	_, err := c.in(cmd, "-c", "1", "-W", "2", to.String())
	return err
}

// mtu is the MTU of the container's eth0.
func (c *podmanContainer) mtu(t *testing.T) string {
	t.Helper()
	out, err := c.in("ip", "-o", "link", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`mtu (\d+)`).FindStringSubmatch(out)[1]
}

// TestPodmanCNI: Debian's podman 4.3 with the CNI backend, one per lab
// host, on a dual-stack vxlan network with weftd -ip-masq; host 3's
// conflist is of type flannel.
//   - Containers get addresses of their host's subnets and reach each
//     other by IPv4 and IPv6 with no NAT (the receiving host's bridge sees
//     the sender's container address), and the underlay through their
//     default gateway.
//   - `podman run -p` publishes a port another host's container reaches.
//   - After `podman rm` the address's host-local file is gone, and
//     `podman run --ip` gets that address again.
//   - A live switch to wireguard with the containers running: pings
//     between them keep flowing, and a new container gets wireguard's MTU
//     from the subnet file while the old ones keep working (2 MiB over TCP
//     from one still at vxlan's MTU).
func TestPodmanCNI(t *testing.T) {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman: %v (make deps installs it)", err)
	}
	l := newLab(t, Options{Hosts: 3, Backend: backends.VXLAN, IPv6: true, Docker: true, WeftdArgs: []string{"-ip-masq"}})
	ctx := context.Background()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	var pods []*Podman
	var cs []*podmanContainer
	for i, h := range l.Hosts {
		p, err := l.StartPodman(h, weftCNIBin)
		if err != nil {
			t.Fatal(err)
		}
		kind := "weft"
		if i == 2 {
			kind = "flannel"
		}
		if err := p.WriteConflist("weft", podmanConflist(kind, h)); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		c := runContainer(t, p, "c")
		if !h.Subnet.Contains(c.ip) || !h.IPv6Subnet.Contains(c.ip6) {
			t.Errorf("the container on %s got %s and %s, want addresses of %s and %s", h.Name, c.ip, c.ip6, h.Subnet, h.IPv6Subnet)
		}
		cs = append(cs, c)
	}
	eventually(t, "every container reaches every other", 20*time.Second, func() error {
		for _, a := range cs {
			for _, b := range cs {
				if a == b {
					continue
				}
				if err := a.ping(b.ip); err != nil {
					return err
				}
				if err := a.ping(b.ip6); err != nil {
					return err
				}
			}
		}
		return nil
	})

	// No NAT: host 2's bridge sees container 1's own address.
	capture, err := l.CaptureOn(l.Hosts[1].Name, "cni0", "icmp and src host "+cs[0].ip.String(), "podman-nonat")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs[0].ping(cs[1].ip); err != nil {
		t.Error(err)
	}
	if _, decoded, _ := capture.Stop(); !strings.Contains(decoded, cs[0].ip.String()) {
		t.Errorf("host 2's bridge did not see container 1's address %s as the source (NAT on the way?)", cs[0].ip)
	}
	// The underlay through the default gateway.
	if err := cs[0].ping(l.Hosts[1].PublicIP); err != nil {
		t.Errorf("a container does not reach the underlay: %v", err)
	}

	// A published port, from another host's container.
	if _, err := pods[0].Podman("run", "-d", "--name", "web", "--network", "weft", "--pull=never", "-p", "8080:80", PodmanImage,
		"sh", "-c", "while true; do echo hello from weft | nc -l -p 80; done"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the published port answers another host's container", 10*time.Second, func() error {
		out, err := cs[1].in("nc", "-w", "2", l.Hosts[0].PublicIP.String(), "8080")
		if err == nil && !strings.Contains(out, "hello from weft") {
			err = fmt.Errorf("read %q", out)
		}
		return err
	})

	// podman rm frees the address; --ip takes it again.
	addrFile := filepath.Join(pods[1].Dir, "var-lib-cni", "networks", "weft", cs[1].ip.String())
	if _, err := os.Stat(addrFile); err != nil {
		t.Errorf("host-local keeps no file for %s: %v", cs[1].ip, err)
	}
	if _, err := pods[1].Podman("rm", "--force", "--time", "0", "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(addrFile); !os.IsNotExist(err) {
		t.Errorf("host-local still holds %s after podman rm (%v)", cs[1].ip, err)
	}
	again := runContainer(t, pods[1], "again", "--ip", cs[1].ip.String())
	if again.ip != cs[1].ip {
		t.Errorf("podman run --ip %s got %s", cs[1].ip, again.ip)
	}
	cs[1] = again

	bulkTCP(t, cs[0], cs[2], 9000, "on vxlan")

	// The live switch to wireguard with the containers running.
	oldMTU := cs[0].mtu(t)
	var pingers []*pinger
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				pingers = append(pingers, startPinger(t, a.host, b.host,
					exec.Command("nsenter", "-t", fmt.Sprint(a.pid), "-n", "ping", "-n", "-i", "0.05", b.ip.String())))
			}
		}
	}
	time.Sleep(time.Second)
	if err := l.PutConfig(ctx, fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":"wireguard"}}`,
		DefaultNetwork, DefaultIPv6Network)); err != nil {
		t.Fatal(err)
	}
	waitSwitched(t, l, backends.WireGuard)
	time.Sleep(time.Second)
	stopPingers(t, pingers, "podman containers in the live switch to wireguard")
	env, err := lease.ReadSubnetFile(l.Hosts[0].SubnetFile())
	if err != nil {
		t.Fatal(err)
	}
	fresh := runContainer(t, pods[0], "fresh")
	if got := fresh.mtu(t); got != fmt.Sprint(env.MTU) || got == oldMTU {
		t.Errorf("a container started after the switch has MTU %s; the subnet file says %d, the old containers have %s", got, env.MTU, oldMTU)
	}
	// An old container (its eth0 still at vxlan's MTU) sends full-size
	// TCP segments over wireguard's smaller path: weftd's MSS clamp
	// covers the CNI bridge.
	bulkTCP(t, cs[0], cs[2], 9001, "after the switch, from a container still at vxlan's MTU")
	for _, b := range cs[1:] {
		if err := fresh.ping(b.ip); err != nil {
			t.Errorf("on wireguard, a new container does not reach an old one: %v", err)
		}
		if err := cs[0].ping(b.ip6); err != nil {
			t.Errorf("on wireguard, old containers do not reach each other over IPv6: %v", err)
		}
	}
}

// bulkTCP sends 2 MiB over TCP from a to b's port and checks they all
// arrive: busybox nc sends, a listener of the test's own, opened in b's
// network namespace, counts.
func bulkTCP(t *testing.T, a, b *podmanContainer, port int, what string) {
	t.Helper()
	ln, err := listenIn(b.pid, port)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer conn.Close()
		n, _ := io.Copy(io.Discard, conn)
		received <- n
	}()
	if _, err := a.in("sh", "-c", fmt.Sprintf("/bin/busybox dd if=/dev/zero bs=1024 count=2048 2>/dev/null | /bin/busybox nc -w 2 %s %d", b.ip, port)); err != nil {
		t.Errorf("TCP %s: %v", what, err)
	}
	select {
	case got := <-received:
		if got != 2<<20 {
			t.Errorf("TCP %s: %d bytes arrived, want %d", what, got, 2<<20)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("TCP %s: the transfer did not finish", what)
	}
}

// listenIn opens a TCP listener on port in the network namespace of
// process pid (a socket stays in the namespace it was made in).
func listenIn(pid, port int) (net.Listener, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, err
	}
	defer orig.Close()
	target, err := netns.GetFromPid(pid)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err := netns.Set(orig); err != nil {
		panic("cannot return to the test's network namespace: " + err.Error())
	}
	return ln, err
}
