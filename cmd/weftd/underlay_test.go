package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/underlay"
)

// TestPeersNetworkConflict: issue 30, item 9. A host whose own address or
// etcd endpoint lies inside PeersNetwork does not route it, and says why.
func TestPeersNetworkConflict(t *testing.T) {
	peers := netip.MustParsePrefix("10.6.0.0/16")
	own := []netip.Addr{netip.MustParseAddr("192.168.50.1"), netip.MustParseAddr("fd00::1")}
	if why := peersNetworkConflict(peers, own, []string{"http://192.168.50.100:2379", "https://etcd.example:2379"}); why != "" {
		t.Errorf("no conflict reported as %q", why)
	}
	if why := peersNetworkConflict(peers, append(own, netip.MustParseAddr("10.6.3.4")), nil); !strings.Contains(why, "address 10.6.3.4 is inside PeersNetwork 10.6.0.0/16") {
		t.Errorf("own address: %q", why)
	}
	if why := peersNetworkConflict(peers, own, []string{"http://10.6.0.9:2379"}); !strings.Contains(why, "etcd endpoint http://10.6.0.9:2379") {
		t.Errorf("etcd endpoint: %q", why)
	}
	if why := peersNetworkConflict(netip.Prefix{}, []netip.Addr{netip.MustParseAddr("10.6.3.4")}, nil); why != "" {
		t.Errorf("no PeersNetwork: %q", why)
	}
}

// TestOverlayOnUnderlay: the external interface carries overlay traffic
// (and the firewall accepts it there) for host-gw, extension, alloc and
// DirectRouting only; the tunnels keep it to weft's devices.
func TestOverlayOnUnderlay(t *testing.T) {
	ext := underlay.ExternalInterface{Name: "eth0"}
	for config, want := range map[string]string{
		`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`:                        "eth0",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"extension"}}`:                      "eth0",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`:                          "",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}`:     "eth0",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`:                      "",
		`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","DirectRouting":true}}`: "eth0",
	} {
		cfg, err := backends.ParseConfig([]byte(config))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(overlayOnUnderlay(cfg, ext), " "); got != want {
			t.Errorf("%s: %q, want %q", config, got, want)
		}
	}
}
