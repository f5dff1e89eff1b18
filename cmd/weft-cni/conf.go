package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/lease"
)

// netConf is the plugin's configuration as a conflist gives it: flannel's
// plugin's keys (subnetFile, dataDir, delegate, an ipam section merged
// into the delegate's) under type "weft" or "flannel".
type netConf struct {
	types.NetConf
	// IPAM replaces types.NetConf's: whatever the conflist puts there is
	// kept and completed (ranges and routes from subnet.env).
	IPAM          map[string]any `json:"ipam,omitempty"`
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
}

// parseConf reads the plugin's configuration, with flannel's defaults
// (the subnet file weftd and flanneld write; a data directory named after
// the type, so a container flannel's plugin added is found by DEL under
// type flannel).
func parseConf(stdin []byte) (*netConf, error) {
	n := &netConf{SubnetFile: lease.DefaultSubnetFile}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, fmt.Errorf("the network configuration: %w", err)
	}
	if n.DataDir == "" {
		n.DataDir = filepath.Join("/var/lib/cni", n.Type)
	}
	if n.Delegate == nil {
		n.Delegate = map[string]any{}
	}
	if t, ok := n.Delegate["type"]; ok {
		if _, isString := t.(string); !isString {
			return nil, errors.New(`"delegate": "type", when given, is a plugin name (a string)`)
		}
	}
	for _, key := range []string{"name", "ipam"} {
		if _, ok := n.Delegate[key]; ok {
			return nil, fmt.Errorf(`"delegate" must not have %q: the plugin sets it (put IPAM options in the top-level "ipam")`, key)
		}
	}
	return n, nil
}

// readSubnetEnv reads the subnet file weftd writes, naming it and weftd
// when it is missing or incomplete.
func readSubnetEnv(path string) (lease.SubnetEnv, error) {
	env, err := lease.ReadSubnetFile(path)
	if err != nil {
		return env, fmt.Errorf("reading the subnet file weftd writes (%w): is weftd running on this host, "+
			"with -subnet-file %s? (weftctl status; journalctl -u weftd)", err, path)
	}
	return env, nil
}

// delegateConf is the configuration handed to the delegate (bridge by
// default): the conflist's delegate options, then what weft fills in from
// the subnet file when the conflist does not say: the network's name and
// cniVersion, ipMasq (the opposite of weftd's -ip-masq: without it the
// bridge masquerades what leaves its subnet, other hosts' containers
// included, as flannel's plugin does), the MTU, and for the bridge
// isGateway, isDefaultGateway and hairpinMode on; and host-local IPAM with
// one range per family and a route to each Network.
func delegateConf(n *netConf, env lease.SubnetEnv) (map[string]any, error) {
	d := make(map[string]any, len(n.Delegate)+8)
	for k, v := range n.Delegate {
		d[k] = v
	}
	d["name"] = n.Name
	if n.CNIVersion != "" {
		d["cniVersion"] = n.CNIVersion
	}
	setDefault(d, "type", "bridge")
	setDefault(d, "ipMasq", !env.IPMasq)
	setDefault(d, "mtu", env.MTU)
	if d["type"] == "bridge" {
		setDefault(d, "isGateway", true)
		setDefault(d, "isDefaultGateway", true)
		setDefault(d, "hairpinMode", true)
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig // portMappings, ips: passed through
	}
	ipam, err := delegateIPAM(n.IPAM, env)
	if err != nil {
		return nil, err
	}
	d["ipam"] = ipam
	return d, nil
}

func setDefault(m map[string]any, key string, value any) {
	if _, ok := m[key]; !ok {
		m[key] = value
	}
}

// delegateIPAM is the conflist's ipam section (host-local unless it names
// another) with a range for each of this host's subnets and, after the
// conflist's own routes, a route to each Network through the bridge.
func delegateIPAM(conf map[string]any, env lease.SubnetEnv) (map[string]any, error) {
	ipam := make(map[string]any, len(conf)+3)
	for k, v := range conf {
		ipam[k] = v
	}
	setDefault(ipam, "type", "host-local")
	var ranges [][]map[string]string
	for _, sn := range []netip.Prefix{env.Subnet, env.IPv6Subnet} {
		if sn.IsValid() {
			ranges = append(ranges, []map[string]string{{"subnet": sn.String()}})
		}
	}
	if len(ranges) == 0 {
		return nil, errors.New("the subnet file names no subnet (FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET)")
	}
	ipam["ranges"] = ranges
	var routes []types.Route
	if r, ok := conf["routes"]; ok {
		raw, _ := json.Marshal(r)
		if err := json.Unmarshal(raw, &routes); err != nil {
			return nil, fmt.Errorf(`"ipam": "routes": %w`, err)
		}
	}
	// Through the bridge's address (host-local's gateway, the subnet's
	// first), named: the bridge plugin's CHECK looks for the route with
	// the gateway the result names.
	for _, half := range [][2]netip.Prefix{{env.Network, env.Subnet}, {env.IPv6Network, env.IPv6Subnet}} {
		if nw, sn := half[0], half[1]; nw.IsValid() && sn.IsValid() {
			routes = append(routes, types.Route{Dst: *prefixIPNet(nw), GW: sn.Addr().Next().AsSlice()})
		}
	}
	ipam["routes"] = routes
	return ipam, nil
}

// subnetsOf are the subnets a delegate configuration's host-local ranges
// give addresses from (a saved one: which subnet a container is on).
func subnetsOf(conf []byte) ([]netip.Prefix, string, error) {
	var d struct {
		Name string `json:"name"`
		IPAM struct {
			Ranges [][]struct {
				Subnet string `json:"subnet"`
			} `json:"ranges"`
		} `json:"ipam"`
	}
	if err := json.Unmarshal(conf, &d); err != nil {
		return nil, "", err
	}
	var out []netip.Prefix
	for _, set := range d.IPAM.Ranges {
		for _, r := range set {
			p, err := netip.ParsePrefix(r.Subnet)
			if err != nil {
				return nil, "", fmt.Errorf("range %q: %w", r.Subnet, err)
			}
			out = append(out, p.Masked())
		}
	}
	return out, d.Name, nil
}
