package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// TestComposeService runs deploy/compose/docker-compose.yml for real on a
// lab host whose docker runs before weft does, as a compose user's would:
// `docker-compose up -d` starts weftd on the host network, it leases a
// subnet and turns healthy, docker is restarted with weft's options, and
// its containers then reach the containers of hosts that run weftd
// directly, across `docker-compose restart weftd`; `docker-compose down`
// leaves the data path in place.
func TestComposeService(t *testing.T) {
	requireDocker(t)
	ctx := context.Background()
	l := newLab(t, Options{Hosts: 3, Backend: backends.VXLAN, Docker: true, WeftdHosts: 2, WeftdArgs: []string{"-ip-masq"}})
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := l.Hosts[2]
	d, err := l.StartDockerd(h, weftctlBin, DockerOptsNone)
	if err != nil {
		t.Fatal(err)
	}
	d.SubnetFile = h.RootPath("/run/flannel/subnet.env")
	if err := l.ImportWeftImage(d); err != nil {
		t.Fatal(err)
	}
	// The compose file binds /run/xtables.lock; docker would make a
	// directory of a missing one, and iptables then fails on the machine.
	if _, err := os.Stat("/run/xtables.lock"); errors.Is(err, os.ErrNotExist) {
		if f, err := os.Create("/run/xtables.lock"); err == nil {
			f.Close()
			t.Cleanup(func() { os.Remove("/run/xtables.lock") })
		}
	}
	env := []string{"WEFTD_ETCD_ENDPOINTS=" + l.EtcdEndpoint(), "WEFTD_IFACE=eth0"}
	compose := func(args ...string) {
		t.Helper()
		if out, err := l.Compose(d, env, args...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	container := "wl" + l.ID + "_weftd_1"
	waitHealthy := func(what string) {
		t.Helper()
		eventually(t, what, 60*time.Second, func() error {
			out, err := d.Docker("inspect", "-f", "{{.State.Health.Status}}", container)
			if err == nil && out != "healthy" {
				err = fmt.Errorf("health %s", out)
			}
			return err
		})
	}
	t.Cleanup(func() { l.Compose(d, env, "down") })

	compose("up", "-d")
	waitHealthy("the compose weftd turns healthy")
	hostConfig, err := d.Docker("inspect", "-f", "{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.SecurityOpt}}", container)
	if err != nil {
		t.Fatal(err)
	}
	if want := "[ALL] [NET_ADMIN NET_RAW] true [no-new-privileges:true]"; hostConfig != want {
		t.Errorf("the weftd container runs with %s, want %s (capabilities, read-only root, no-new-privileges)", hostConfig, want)
	}
	subnetEnv, err := lease.ReadSubnetFile(d.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	h.Subnet = subnetEnv.Subnet
	rec, ok, err := l.Store().Get(ctx, lease.SubnetKey(h.Subnet))
	if err != nil || !ok || !strings.Contains(string(rec.Value), `"PublicIP":"`+h.PublicIP.String()+`"`) {
		t.Fatalf("the compose weftd's lease %s: %s (%v)", lease.SubnetKey(h.Subnet), rec.Value, err)
	}

	// Docker now restarts on weft's subnet, as the systemd drop-in would
	// start it; the weftd container comes back with it (restart policy).
	d.Format = DockerOptsEnv
	if err := d.Restart(weftctlBin); err != nil {
		t.Fatal(err)
	}
	waitHealthy("the compose weftd healthy again after docker restarted")
	hosts := startDocker(t, l, l.Hosts[:2])
	composeHost := &DockerHost{Host: h, Docker: d}
	for i := range containersPerHost {
		c, err := d.Run(fmt.Sprintf("c%d-%d", h.Index, i+1))
		if err != nil {
			t.Fatal(err)
		}
		if !h.Subnet.Contains(c.IP) {
			t.Errorf("container %s got %s, outside the compose weftd's lease %s", c.Name, c.IP, h.Subnet)
		}
		composeHost.Containers = append(composeHost.Containers, c)
	}
	hosts = append(hosts, composeHost)
	pairs := waitPingAcross(t, hosts, 30*time.Second)
	reliability(t, "compose: weftd as a compose service beside 2 hosts running it directly: %d cross-host container pairs reached each other", pairs)

	stop := make(chan struct{})
	gap := pingGap(hosts[0].Containers[0], composeHost.Containers[0].IP, stop)
	time.Sleep(300 * time.Millisecond)
	compose("restart", "weftd")
	waitHealthy("the compose weftd healthy after docker-compose restart weftd")
	waitPingAcross(t, hosts, 30*time.Second)
	close(stop)
	reliability(t, "compose: longest ping gap across docker-compose restart weftd: %s", gap().Round(10*time.Millisecond))

	compose("down")
	if _, err := d.Docker("inspect", container); err == nil {
		t.Error("docker-compose down left the weftd container")
	}
	if _, err := Exec(h.Name, "ip", "link", "show", "weft.1"); err != nil {
		t.Errorf("docker-compose down removed the data path: %v", err)
	}
	if _, failed := pingAcross(hosts); len(failed) > 0 {
		t.Errorf("after docker-compose down, traffic stopped: %s", strings.Join(failed, "; "))
	}
}
