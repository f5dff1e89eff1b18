package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// kernelFloor is what the kernel alone takes to hold the objects of n
// simulated vxlan leases, fed by iproute2's batch mode (one process, one
// netlink socket, no daemon): the floor under weftd's converge time.
type kernelFloor struct {
	leases int
	// neighbours, fdb and routes are the batches' times; nexthops the
	// same routes laid out as nexthop objects (a nexthop per peer and a
	// route naming it), zero when the kernel refused them.
	neighbours, fdb, routes, nexthops time.Duration
	// weftd is the vxlan row's start → READY at this size, in this run.
	weftd time.Duration
}

// total is the floor with routes carrying their gateways.
func (f kernelFloor) total() time.Duration { return f.neighbours + f.fdb + f.routes }

// totalNexthops is the floor with routes through nexthop objects.
func (f kernelFloor) totalNexthops() time.Duration { return f.neighbours + f.fdb + f.nexthops }

// measureKernelFloor times `ip -batch` and `bridge -batch` of the
// neighbours, FDB entries and routes weftd programs for n simulated vxlan
// leases, in a namespace of its own with a vxlan device like weftd's.
func measureKernelFloor(n int) (kernelFloor, error) {
	res := kernelFloor{leases: n}
	suffix := make([]byte, 3)
	rand.Read(suffix)
	ns := "wb-floor-" + hex.EncodeToString(suffix)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return res, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	dir, err := os.MkdirTemp("", "weftbench-floor")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	const dev = "weft.1"
	for _, cmd := range [][]string{
		{"link", "add", "ext0", "type", "veth", "peer", "name", "ext0p"},
		{"link", "set", "ext0", "up"},
		{"addr", "add", "172.16.255.254/16", "dev", "ext0"},
		{"link", "add", dev, "type", "vxlan", "id", "1", "dev", "ext0", "local", "172.16.255.254", "dstport", "8472", "nolearning"},
		{"link", "set", dev, "up"},
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, cmd...)...).CombinedOutput(); err != nil {
			return res, fmt.Errorf("ip %s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	var neigh, fdb, routes, nexthops strings.Builder
	for i := range n {
		subnet, mac, publicIP, err := fakeVTEP(i)
		if err != nil {
			return res, err
		}
		vtep := subnet.Addr()
		fmt.Fprintf(&neigh, "neigh replace %s lladdr %s dev %s nud permanent\n", vtep, mac, dev)
		fmt.Fprintf(&fdb, "fdb append %s dev %s dst %s self permanent\n", mac, dev, publicIP)
		fmt.Fprintf(&routes, "route replace %s via %s dev %s onlink proto 87\n", subnet, vtep, dev)
		fmt.Fprintf(&nexthops, "nexthop replace id %d via %s dev %s onlink proto 87\nroute replace %s nhid %d proto 87\n", i+1, vtep, dev, subnet, i+1)
	}
	batch := func(tool, name, text string) (time.Duration, error) {
		file := filepath.Join(dir, name)
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			return 0, err
		}
		args := []string{"-n", ns, "-batch", file}
		if tool == "bridge" {
			args = []string{"netns", "exec", ns, "bridge", "-batch", file}
			tool = "ip"
		}
		start := time.Now()
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("%s batch of %s: %v: %s", tool, name, err, firstLine(string(out)))
		}
		return time.Since(start), nil
	}
	if res.neighbours, err = batch("ip", "neighbours", neigh.String()); err != nil {
		return res, err
	}
	if res.fdb, err = batch("bridge", "fdb", fdb.String()); err != nil {
		return res, err
	}
	if res.routes, err = batch("ip", "routes", routes.String()); err != nil {
		return res, err
	}
	// The same routes through nexthop objects, once the others are gone
	// (routes replaced in place would time the replacement).
	if out, err := exec.Command("ip", "-n", ns, "route", "flush", "proto", "87").CombinedOutput(); err != nil {
		return res, fmt.Errorf("ip route flush: %v: %s", err, out)
	}
	if d, err := batch("ip", "nexthops", nexthops.String()); err == nil {
		res.nexthops = d
	} else {
		fmt.Printf("kernel floor, %d leases: nexthop objects not measured: %v\n", n, err)
	}
	return res, nil
}

// firstLine is s up to its first newline.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// renderKernelFloor is the scale section's table of kernel floors.
func renderKernelFloor(floors []kernelFloor) string {
	if len(floors) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString(`
The kernel alone: the same neighbours, FDB entries and routes for the vxlan rows' leases, written by
` + "`ip -batch`" + ` and ` + "`bridge -batch`" + ` (one process each, no daemon) into a namespace with a vxlan device like
weftd's, in this run. Routes "with gateways" are laid out as flanneld installs them (each via the
peer's VTEP address, onlink), and as weftd does on a kernel without nexthop objects; "through nexthop
objects" as weftd installs them, a nexthop object per peer and a route naming it. × is weftd's
start → READY over the kernel's time for each layout.

| leases | neighbours | FDB entries | routes with gateways | all, with gateways | routes through nexthop objects | all, through nexthop objects | weftd vxlan start → READY | × all, with gateways | × all, through nexthop objects |
|---|---|---|---|---|---|---|---|---|---|
`)
	for _, f := range floors {
		nh, all, weftd, ratio, ratioNH := "refused", "–", "–", "–", "–"
		if f.nexthops > 0 {
			nh, all = f.nexthops.Round(time.Millisecond).String(), f.totalNexthops().Round(time.Millisecond).String()
		}
		if f.weftd > 0 {
			weftd, ratio = f.weftd.Round(time.Millisecond).String(), fmt.Sprintf("%.2f", f.weftd.Seconds()/f.total().Seconds())
			if f.nexthops > 0 {
				ratioNH = fmt.Sprintf("%.2f", f.weftd.Seconds()/f.totalNexthops().Seconds())
			}
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f.leases, f.neighbours.Round(time.Millisecond), f.fdb.Round(time.Millisecond),
			f.routes.Round(time.Millisecond), f.total().Round(time.Millisecond), nh, all, weftd, ratio, ratioNH)
	}
	return b.String()
}
