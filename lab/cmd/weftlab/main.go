// Command weftlab brings up a weft cluster in network namespaces on this
// machine (see package lab), shows who has which subnet and which container
// reaches which, and removes it all on Ctrl-C or after -duration.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/weftnet/weft/lab"
)

func main() {
	if lab.RunRole() {
		return
	}
	os.Exit(run())
}

// run is the lab's whole life; it returns the exit code only after the lab
// is removed, so nothing is left behind on failure.
func run() int {
	hosts := flag.Int("hosts", 3, "number of hosts")
	backend := flag.String("backend", "wireguard", "Backend.Type to configure (the default is the encrypted WireGuard mesh: kernel WireGuard where the kernel has it, wireguard-go in weftd where not)")
	duration := flag.Duration("duration", 0, "tear down after this long (0: wait for Ctrl-C)")
	weftd := flag.String("weftd", "", "weftd binary (default: weftd next to this binary)")
	docker := flag.Bool("docker", false, "run a dockerd on every host, started from weft's subnet file as the systemd drop-in does, with `docker run` containers (needs docker.io and busybox-static)")
	weftctl := flag.String("weftctl", "", "weftctl binary, for -docker (default: weftctl next to this binary)")
	members := flag.Int("etcd-members", 1, "etcd cluster size: 1 runs etcd in the underlay namespace, more run each member in a namespace of its own and give weftd every endpoint")
	ipv6 := flag.Bool("ipv6", false, "dual stack: IPv6 on the underlay beside IPv4, \"EnableIPv6\" in the config, and an address of each family in every container (host-gw, vxlan, wireguard)")
	ipv6Only := flag.Bool("ipv6-only", false, "an IPv6-only overlay (\"EnableIPv4\": false): hosts lease only IPv6 subnets, containers have only IPv6 addresses")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weftlab: needs root to create network namespaces; run it with sudo")
		return 2
	}
	if *weftd == "" {
		self, _ := os.Executable()
		*weftd = filepath.Join(filepath.Dir(self), "weftd")
	}
	if *weftctl == "" {
		self, _ := os.Executable()
		*weftctl = filepath.Join(filepath.Dir(self), "weftctl")
	}
	if _, err := os.Stat(*weftd); err != nil {
		fmt.Fprintf(os.Stderr, "weftlab: weftd binary: %v; build it with `make build` or pass -weftd\n", err)
		return 2
	}
	self, _ := os.Executable()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	say := func(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
	say("creating %d hosts on one underlay bridge, with %d etcd member(s), backend %s", *hosts, *members, *backend)
	l, err := lab.New(lab.Options{Hosts: *hosts, Backend: *backend, Weftd: *weftd, Self: self, Docker: *docker, EtcdMembers: *members, IPv6: *ipv6, IPv6Only: *ipv6Only})
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftlab:", err)
		return 1
	}
	defer func() { say("removing the lab (namespaces, processes, files)"); l.Close() }()
	say("etcd at %s; network config: %s", l.EtcdEndpoint(), l.Config())
	if len(l.Members) > 1 {
		if leader, err := l.Leader(ctx); err == nil {
			say("etcd leader: %s (%s)", leader.Name, leader.Endpoint())
		}
	}
	start := time.Now()
	if err := l.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab:", err)
		return 1
	}
	say("all %d weftd READY in %s", *hosts, time.Since(start).Round(time.Millisecond))
	fmt.Println()
	fmt.Print(l.HostTable())
	fmt.Println()
	var table, try string
	var ok bool
	if *docker {
		var dockerHosts []*lab.DockerHost
		if dockerHosts, err = startDocker(l, *weftctl, say); err != nil {
			fmt.Fprintln(os.Stderr, "weftlab:", err)
			return 1
		}
		say("ping matrix, docker container to docker container across hosts (docker exec ping):")
		table, ok = lab.DockerPingMatrix(dockerHosts)
		d, c := dockerHosts[0].Docker, dockerHosts[1].Containers[0]
		try = fmt.Sprintf("/usr/bin/docker -H unix://%s exec %s ping %s", d.Socket(), dockerHosts[0].Containers[0].Name, c.IP)
	} else {
		say("ping matrix, container to container across hosts:")
		// A first packet may wait for a handshake (WireGuard) or a
		// neighbour: a busy machine gets a few rounds.
		for deadline := time.Now().Add(20 * time.Second); ; {
			if table, ok = l.PingMatrix(); ok || time.Now().After(deadline) {
				break
			}
		}
		dst := l.Hosts[1].ContainerIP()
		if !dst.IsValid() {
			dst = l.Hosts[1].ContainerIPv6() // an IPv6-only lab
		}
		try = fmt.Sprintf("ip netns exec %s ping %s", l.Hosts[0].Container, dst)
	}
	fmt.Print(table)
	fmt.Println()
	if ok {
		say("every container reaches every other one")
	} else {
		say("some pairs failed; weftd logs are in %s", l.Dir)
	}
	say("try: %s   (logs: %s/h*/weftd.log)", try, l.Dir)
	if *duration > 0 {
		say("staying up for %s", *duration)
		select {
		case <-ctx.Done():
		case <-time.After(*duration):
		}
	} else {
		say("press Ctrl-C to tear it down")
		<-ctx.Done()
	}
	if !ok {
		return 1
	}
	return 0
}

// startDocker starts a dockerd on every host from its subnet file, as
// weft's systemd units do, and one container on each.
func startDocker(l *lab.Lab, weftctl string, say func(string, ...any)) ([]*lab.DockerHost, error) {
	var hosts []*lab.DockerHost
	for _, h := range l.Hosts {
		d, err := l.StartDockerd(h, weftctl, lab.DockerOptsEnv)
		if err != nil {
			return nil, err
		}
		say("dockerd on %s: %s", h.Name, strings.Join(d.Args, " "))
		c, err := d.Run(fmt.Sprintf("c%d", h.Index))
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, &lab.DockerHost{Host: h, Docker: d, Containers: []lab.Container{c}})
	}
	return hosts, nil
}
