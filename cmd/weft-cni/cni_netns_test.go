//go:build netns

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/lease"
)

// debianPlugins is where Debian's containernetworking-plugins puts bridge
// and host-local (make deps installs it).
const debianPlugins = "/usr/lib/cni"

// cniBench is one host of the host-tier tests: a network namespace with
// this plugin (as weft and as flannel) and Debian's plugins, a subnet file
// and data directories of its own.
type cniBench struct {
	t                          *testing.T
	cni                        *libcni.CNIConfig
	dir, subnetFile, hostLocal string
	bridge                     string
}

func newCNIBench(t *testing.T) *cniBench {
	if _, err := os.Stat(filepath.Join(debianPlugins, "bridge")); err != nil {
		t.Fatalf("Debian's bridge plugin: %v (make deps installs containernetworking-plugins)", err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "weft"), ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the plugin: %v\n%s", err, out)
	}
	if err := os.Symlink("weft", filepath.Join(bin, "flannel")); err != nil {
		t.Fatal(err)
	}
	host := netkerneltest.NewNetns(t)
	host.Enter(t) // the plugins run here, so the bridge is made here
	b := &cniBench{t: t, dir: dir, subnetFile: filepath.Join(dir, "subnet.env"), hostLocal: filepath.Join(dir, "host-local"),
		bridge: netkerneltest.UniqueName("wcn"),
		cni:    libcni.NewCNIConfigWithCacheDir([]string{bin, debianPlugins}, filepath.Join(dir, "cache"), nil)}
	b.setSubnet("10.5.7.0/24", 1400)
	return b
}

// setSubnet writes the subnet file as weftd does.
func (b *cniBench) setSubnet(subnet string, mtu int) {
	b.t.Helper()
	env := lease.SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix(subnet), MTU: mtu, IPMasq: true}
	if err := lease.WriteSubnetFile(b.subnetFile, env); err != nil {
		b.t.Fatal(err)
	}
}

// list is the conflist of a network of plugin type kind.
func (b *cniBench) list(kind string) *libcni.NetworkConfigList {
	b.t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"wt-%s","plugins":[{"type":%q,"subnetFile":%q,"dataDir":%q,
		"ipam":{"dataDir":%q},"delegate":{"bridge":%q}}]}`, kind, kind, b.subnetFile, filepath.Join(b.dir, "state-"+kind),
		b.hostLocal, b.bridge)
	list, err := libcni.ConfListFromBytes([]byte(conf))
	if err != nil {
		b.t.Fatal(err)
	}
	return list
}

// container is a new network namespace as a runtime would make one.
func (b *cniBench) container() (*libcni.RuntimeConf, *netkerneltest.Netns) {
	ns := netkerneltest.NewNetns(b.t)
	return &libcni.RuntimeConf{ContainerID: ns.Name, NetNS: "/run/netns/" + ns.Name, IfName: "eth0"}, ns
}

func (b *cniBench) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) netip.Addr {
	b.t.Helper()
	res, err := b.cni.AddNetworkList(context.Background(), list, rt)
	if err != nil {
		b.t.Fatalf("ADD %s: %v", rt.ContainerID, err)
	}
	r, err := types100.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		b.t.Fatalf("ADD %s: result %v %v", rt.ContainerID, res, err)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

// TestCNIInNetns: the plugin through libcni, as a runtime calls it, with
// Debian's bridge and host-local on plain network namespaces.
func TestCNIInNetns(t *testing.T) {
	b := newCNIBench(t)
	ctx := context.Background()
	weft := b.list("weft")

	// ADD, CHECK, DEL, DEL again.
	rt, ns := b.container()
	addr := b.add(weft, rt)
	if !netip.MustParsePrefix("10.5.7.0/24").Contains(addr) {
		t.Errorf("the container got %s, want an address of 10.5.7.0/24", addr)
	}
	if out := ns.Run(t, "ip", "-o", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("the container's eth0: %s, want mtu 1400 from the subnet file", out)
	}
	if out := ns.Run(t, "ip", "route"); !strings.Contains(out, "10.5.0.0/16 via 10.5.7.1") || !strings.Contains(out, "default via 10.5.7.1") {
		t.Errorf("the container's routes:\n%s\nwant the Network and a default route via the bridge", out)
	}
	if err := b.cni.CheckNetworkList(ctx, weft, rt); err != nil {
		t.Errorf("CHECK of a container as ADD left it: %v", err)
	}
	ns.Run(t, "ip", "link", "set", "eth0", "mtu", "1300")
	if err := b.cni.CheckNetworkList(ctx, weft, rt); err == nil || !strings.Contains(err.Error(), "MTU 1300") {
		t.Errorf("CHECK after the MTU was changed by hand: %v, want it named", err)
	}
	ns.Run(t, "ip", "link", "set", "eth0", "mtu", "1400")
	for i := range 2 {
		if err := b.cni.DelNetworkList(ctx, weft, rt); err != nil {
			t.Errorf("DEL #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(filepath.Join(b.hostLocal, "wt-weft", addr.String())); !os.IsNotExist(err) {
		t.Errorf("host-local still holds %s after DEL (%v)", addr, err)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "state-weft", rt.ContainerID)); !os.IsNotExist(err) {
		t.Errorf("the kept configuration is still there after DEL (%v)", err)
	}

	// The flannel-named conflist: the same plugin answers.
	frt, _ := b.container()
	if got := b.add(b.list("flannel"), frt); !netip.MustParsePrefix("10.5.7.0/24").Contains(got) {
		t.Errorf("type flannel: %s", got)
	}
	if _, err := os.Stat(filepath.Join(b.dir, "state-flannel", frt.ContainerID)); err != nil {
		t.Errorf("type flannel kept nothing in its data directory: %v", err)
	}
	if err := b.cni.DelNetworkList(ctx, b.list("flannel"), frt); err != nil {
		t.Errorf("DEL type flannel: %v", err)
	}

	// A container flannel's own plugin added (its bridge and host-local
	// called directly, its delegate configuration kept as flannel's plugin
	// keeps it): DEL under type flannel undoes it from that file.
	byFlannel, _ := b.container()
	flannelConf := fmt.Sprintf(`{"bridge":%q,"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":%q,`+
		`"ranges":[[{"subnet":"10.5.7.0/24"}]],"routes":[{"dst":"10.5.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,`+
		`"isGateway":true,"mtu":1400,"name":"wt-flannel","type":"bridge"}`, b.bridge, b.hostLocal)
	res, err := invoke.ExecPluginWithResult(ctx, filepath.Join(debianPlugins, "bridge"), []byte(flannelConf),
		&invoke.Args{Command: "ADD", ContainerID: byFlannel.ContainerID, NetNS: byFlannel.NetNS, IfName: "eth0", Path: debianPlugins}, nil)
	if err != nil {
		t.Fatalf("flannel's delegate ADD: %v", err)
	}
	flannelAddr, _ := types100.NewResultFromResult(res)
	if err := os.MkdirAll(filepath.Join(b.dir, "state-flannel"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.dir, "state-flannel", byFlannel.ContainerID), []byte(flannelConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.cni.DelNetworkList(ctx, b.list("flannel"), byFlannel); err != nil {
		t.Errorf("DEL of a container flannel's plugin added: %v", err)
	}
	if _, err := os.Stat(filepath.Join(b.hostLocal, "wt-flannel", flannelAddr.IPs[0].Address.IP.String())); !os.IsNotExist(err) {
		t.Errorf("host-local still holds %s, added by flannel's plugin, after DEL (%v)", flannelAddr.IPs[0].Address.IP, err)
	}

	// The host's subnet changes with a container still on the old one.
	old, _ := b.container()
	b.add(weft, old)
	b.setSubnet("10.5.8.0/24", 1400)
	next, nextNS := b.container()
	if _, err := b.cni.AddNetworkList(ctx, weft, next); err == nil || !strings.Contains(err.Error(), old.ContainerID) {
		t.Errorf("ADD after a subnet change with a container left on the old one: %v, want an error naming it", err)
	}
	b.cni.DelNetworkList(ctx, weft, next) // the runtime's DEL after a failed ADD
	if err := b.cni.CheckNetworkList(ctx, weft, old); err == nil || !strings.Contains(err.Error(), "not in this host's subnet") {
		t.Errorf("CHECK of the container on the old subnet: %v, want it named", err)
	}
	if err := b.cni.DelNetworkList(ctx, weft, old); err != nil {
		t.Errorf("DEL after the subnet changed (the kept configuration): %v", err)
	}
	if got := b.add(weft, next); !netip.MustParsePrefix("10.5.8.0/24").Contains(got) {
		t.Errorf("ADD once the old subnet is empty: %s, want 10.5.8.0/24", got)
	}
	if out := nextNS.Run(t, "ip", "route"); !strings.Contains(out, "default via 10.5.8.1") {
		t.Errorf("the bridge was not re-addressed: the container's routes:\n%s", out)
	}

	// No subnet file: a clear error naming it and weftd.
	os.Remove(b.subnetFile)
	missing, _ := b.container()
	if _, err := b.cni.AddNetworkList(ctx, weft, missing); err == nil || !strings.Contains(err.Error(), b.subnetFile) ||
		!strings.Contains(err.Error(), "weftd") {
		t.Errorf("ADD without the subnet file: %v, want an error naming %s and weftd", err, b.subnetFile)
	}
}
