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
	backend := flag.String("backend", "host-gw", "Backend.Type to configure")
	duration := flag.Duration("duration", 0, "tear down after this long (0: wait for Ctrl-C)")
	weftd := flag.String("weftd", "", "weftd binary (default: weftd next to this binary)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weftlab: needs root to create network namespaces; run it with sudo")
		return 2
	}
	if *weftd == "" {
		self, _ := os.Executable()
		*weftd = filepath.Join(filepath.Dir(self), "weftd")
	}
	if _, err := os.Stat(*weftd); err != nil {
		fmt.Fprintf(os.Stderr, "weftlab: weftd binary: %v; build it with `make build` or pass -weftd\n", err)
		return 2
	}
	self, _ := os.Executable()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	say := func(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }
	say("creating %d hosts on one underlay bridge, with etcd, backend %s", *hosts, *backend)
	l, err := lab.New(lab.Options{Hosts: *hosts, Backend: *backend, Weftd: *weftd, Self: self})
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftlab:", err)
		return 1
	}
	defer func() { say("removing the lab (namespaces, processes, files)"); l.Close() }()
	say("etcd at %s; network config: %s", l.EtcdEndpoint(), l.Config())
	start := time.Now()
	if err := l.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "weftlab:", err)
		return 1
	}
	say("all %d weftd READY in %s", *hosts, time.Since(start).Round(time.Millisecond))
	fmt.Println()
	fmt.Print(l.HostTable())
	fmt.Println()
	say("ping matrix, container to container across hosts:")
	table, ok := l.PingMatrix()
	fmt.Print(table)
	fmt.Println()
	if ok {
		say("every container reaches every other one")
	} else {
		say("some pairs failed; weftd logs are in %s", l.Dir)
	}
	say("try: ip netns exec %s ping %s   (logs: %s/h*/weftd.log)", l.Hosts[0].Container, l.Hosts[1].ContainerIP(), l.Dir)
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
