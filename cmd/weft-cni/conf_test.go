package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/lease"
)

// TestDelegateConf: what the bridge gets from a conflist and a subnet
// file: weft's defaults where the conflist is silent, the conflist's
// options where it speaks, one host-local range per family and a route to
// each Network through the bridge; on an IPv6-only network, IPv6 alone.
func TestDelegateConf(t *testing.T) {
	dual := lease.SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.7.0/24"), MTU: 1420,
		IPv6Network: netip.MustParsePrefix("fd00:5::/48"), IPv6Subnet: netip.MustParsePrefix("fd00:5:0:7::/64")}
	v6only := lease.SubnetEnv{IPv6Network: dual.IPv6Network, IPv6Subnet: dual.IPv6Subnet, MTU: 1420, IPMasq: true}
	for name, tt := range map[string]struct {
		conf string
		env  lease.SubnetEnv
		want string
	}{
		"defaults, dual stack": {`{"cniVersion":"1.0.0","name":"weft","type":"weft"}`, dual,
			`{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"subnet":"10.5.7.0/24"}],[{"subnet":"fd00:5:0:7::/64"}]],` +
				`"routes":[{"dst":"10.5.0.0/16","gw":"10.5.7.1"},{"dst":"fd00:5::/48","gw":"fd00:5:0:7::1"}],"type":"host-local"},` +
				`"isDefaultGateway":true,"isGateway":true,"mtu":1420,"name":"weft","type":"bridge"}`},
		"the conflist's options and routes win": {`{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"hairpinMode":false,"mtu":1300,"bridge":"br9"},` +
			`"ipam":{"dataDir":"/x","routes":[{"dst":"192.0.2.0/24"}]},"runtimeConfig":{"ips":["10.5.7.9/24"]}}`, dual,
			`{"bridge":"br9","cniVersion":"1.0.0","hairpinMode":false,"ipMasq":true,"ipam":{"dataDir":"/x","ranges":[[{"subnet":"10.5.7.0/24"}],[{"subnet":"fd00:5:0:7::/64"}]],` +
				`"routes":[{"dst":"192.0.2.0/24"},{"dst":"10.5.0.0/16","gw":"10.5.7.1"},{"dst":"fd00:5::/48","gw":"fd00:5:0:7::1"}],"type":"host-local"},` +
				`"isDefaultGateway":true,"isGateway":true,"mtu":1300,"name":"n","runtimeConfig":{"ips":["10.5.7.9/24"]},"type":"bridge"}`},
		"IPv6-only, weftd masquerades": {`{"cniVersion":"1.0.0","name":"weft","type":"weft"}`, v6only,
			`{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"fd00:5:0:7::/64"}]],` +
				`"routes":[{"dst":"fd00:5::/48","gw":"fd00:5:0:7::1"}],"type":"host-local"},` +
				`"isDefaultGateway":true,"isGateway":true,"mtu":1420,"name":"weft","type":"bridge"}`},
	} {
		n, err := parseConf([]byte(tt.conf))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		d, err := delegateConf(n, tt.env)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, _ := json.Marshal(d)
		if string(got) != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", name, got, tt.want)
		}
		if subnets, network, err := subnetsOf(got); err != nil || network != n.Name || len(subnets) == 0 {
			t.Errorf("%s: the kept configuration reads back as %v %q %v", name, subnets, network, err)
		}
	}
	for conf, want := range map[string]string{
		`{"name":"n","type":"weft","delegate":{"name":"x"}}`:                `must not have "name"`,
		`{"name":"n","type":"weft","delegate":{"ipam":{}}}`:                 `must not have "ipam"`,
		`{"name":"n","type":"weft","delegate":{"type":7}}`:                  `"type", when given, is a plugin name`,
		`{"name":"n","type":"weft","subnetFile":"/x"} trailing`:             "the network configuration",
		`{"name":"n","type":"weft","dataDir":"/d","subnetFile":"/nothing"}`: "",
	} {
		_, err := parseConf([]byte(conf))
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v, want %q", conf, err, want)
		}
	}
	if _, err := readSubnetEnv("/nonexistent/subnet.env"); err == nil || !strings.Contains(err.Error(), "/nonexistent/subnet.env") ||
		!strings.Contains(err.Error(), "weftd") {
		t.Errorf("a missing subnet file: %v", err)
	}
	if _, err := statePath("/d", "a..b"); err != nil {
		t.Errorf("a container ID with dots is a file name: %v", err)
	}
	if _, err := statePath("/d", "a/b"); err == nil {
		t.Error("a container ID with a slash named a file")
	}
}
