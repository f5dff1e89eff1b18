// Command weft-cni is weft's CNI plugin (installed as /opt/cni/bin/weft,
// and as /opt/cni/bin/flannel where no flannel plugin is): it puts a
// container started by podman, containerd or any CNI runtime on this
// host's weft subnet. Like flannel's plugin it reads the subnet file
// weftd writes at every ADD and hands the work to the standard bridge and
// host-local plugins; it keeps what it gave them per container, so DEL
// and CHECK work after the subnet file changed.
//
// A conflist (deploy/cni/weft.conflist):
//
//	{"cniVersion": "1.0.0", "name": "weft", "plugins": [
//	  {"type": "weft", "capabilities": {"ips": true}},
//	  {"type": "portmap", "capabilities": {"portMappings": true}}]}
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck},
		version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0"), "weft CNI plugin: containers on this host's weft subnet")
}

// cmdAdd hands the container to the delegate with this host's subnet.
// After the host's subnet changed (a new lease), the bridge still holds
// the old subnet's gateway: when no container of this network is left on
// the old subnet the bridge is re-addressed (forceAddress), else ADD
// fails naming those containers.
func cmdAdd(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	d, err := delegateConf(n, env)
	if err != nil {
		return err
	}
	if d["type"] == "bridge" {
		stale, err := onOtherSubnets(n.DataDir, n.Name, args.ContainerID, env)
		if err != nil {
			return err
		}
		if len(stale) > 0 {
			return fmt.Errorf("this host's subnet is now %s (%s), but containers of network %q still have addresses "+
				"of the old one on its bridge: %s; remove or restart them first (a container that is gone: delete its file in %s)",
				joinSubnets(env), n.SubnetFile, n.Name, strings.Join(stale, ", "), n.DataDir)
		}
		setDefault(d, "forceAddress", true)
	}
	conf, err := json.Marshal(d)
	if err != nil {
		return err
	}
	// Kept before the delegate runs: a failed ADD is followed by a DEL,
	// which must find what to undo.
	if err := saveState(n.DataDir, args.ContainerID, conf); err != nil {
		return err
	}
	result, err := invoke.DelegateAdd(context.Background(), d["type"].(string), conf, nil)
	if err != nil {
		return fmt.Errorf("the %s plugin: %w", d["type"], err)
	}
	return types.PrintResult(result, n.CNIVersion)
}

// cmdDel hands the container's kept configuration to the delegate; a
// container never added (or deleted already) is no error.
func cmdDel(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	conf, ok, err := loadState(n.DataDir, args.ContainerID)
	if err != nil || !ok {
		return err
	}
	var nc types.NetConf
	if err := json.Unmarshal(conf, &nc); err != nil || nc.Type == "" {
		// Nothing to hand to a delegate: what it made stays until the
		// container's namespace goes.
		return removeState(n.DataDir, args.ContainerID)
	}
	if err := invoke.DelegateDel(context.Background(), nc.Type, conf, nil); err != nil {
		return fmt.Errorf("the %s plugin: %w", nc.Type, err)
	}
	return removeState(n.DataDir, args.ContainerID)
}

// cmdCheck has the delegate check what it made, then checks the container
// against this host's subnet file and what ADD gave it: its addresses in
// this host's subnets, its MTU, and a route to each Network.
func cmdCheck(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	conf, ok, err := loadState(n.DataDir, args.ContainerID)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("container %s was not added to network %q by this plugin (nothing kept in %s)", args.ContainerID, n.Name, n.DataDir)
	}
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return err
	}
	var d map[string]any
	if err := json.Unmarshal(conf, &d); err != nil {
		return fmt.Errorf("what ADD kept for container %s: %w", args.ContainerID, err)
	}
	if n.RawPrevResult == nil {
		return fmt.Errorf("CHECK of container %s came without the ADD's result (prevResult)", args.ContainerID)
	}
	d["prevResult"], d["cniVersion"] = n.RawPrevResult, n.CNIVersion
	withPrev, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if err := invoke.DelegateCheck(context.Background(), d["type"].(string), withPrev, nil); err != nil {
		return fmt.Errorf("the %s plugin: %w", d["type"], err)
	}
	if err := version.ParsePrevResult(&n.NetConf); err != nil {
		return err
	}
	mtu, _ := d["mtu"].(float64)
	return checkContainer(args, n.PrevResult, env, int(mtu))
}
