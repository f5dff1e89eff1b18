package lease

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestParseConfigIPv6Defaults: flannel's defaults for the IPv6 half.
func TestParseConfigIPv6Defaults(t *testing.T) {
	for _, tt := range []struct {
		name, json string
		len        int
		min, max   string
	}{
		{"slash48 gets /64", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00:5::/48"}`, 64, "fc00:5:0:1::", "fc00:5:0:ffff::"},
		{"slash62 still /64", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00::/62"}`, 64, "fc00:0:0:1::", "fc00:0:0:3::"},
		{"slash64 splits into four", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00::/64"}`, 66, "fc00::4000:0:0:0", "fc00::c000:0:0:0"},
		{"slash124 smallest", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00::/124"}`, 126, "fc00::4", "fc00::c"},
		{"explicit", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":80,"IPv6SubnetMin":"fc00::1:0:0:0","IPv6SubnetMax":"fc00::2:0:0:0"}`, 80, "fc00::1:0:0:0", "fc00::2:0:0:0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if !cfg.EnableIPv4 || !cfg.EnableIPv6 || cfg.IPv6SubnetLen != tt.len || cfg.IPv6SubnetMin.String() != tt.min || cfg.IPv6SubnetMax.String() != tt.max {
				t.Errorf("got v4=%v v6=%v /%d %s-%s, want /%d %s-%s", cfg.EnableIPv4, cfg.EnableIPv6, cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, tt.len, tt.min, tt.max)
			}
			if len(cfg.Notes) != 0 {
				t.Errorf("notes on a plain dual-stack config: %v", cfg.Notes)
			}
		})
	}
	// Without EnableIPv6 the IPv6 keys are ignored, as flannel ignores them.
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","IPv6Network":"banana"}`))
	if err != nil || cfg.EnableIPv6 || cfg.IPv6Network.IsValid() || len(cfg.Notes) != 0 {
		t.Errorf("IPv6 keys without EnableIPv6: %+v %v", cfg, err)
	}
}

// TestParseConfigIPv6Only: "EnableIPv4": false makes an IPv6-only network,
// as in flannel: no IPv4 pool (the IPv4 keys ignored, with a note), no IPv4
// subnet fits, only IPv6 subnets do.
func TestParseConfigIPv6Only(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EnableIPv4 || !cfg.EnableIPv6 || cfg.Network.IsValid() || cfg.IPv6SubnetLen != 64 {
		t.Errorf("IPv6-only config: %+v", cfg)
	}
	if !strings.Contains(strings.Join(cfg.Notes, "\n"), `keys "Network", "SubnetLen", "SubnetMin", "SubnetMax" are ignored`) {
		t.Errorf("no note that the IPv4 keys are ignored: %v", cfg.Notes)
	}
	if cfg.Fits(netip.MustParsePrefix("10.5.1.0/24")) || !cfg.Fits(netip.Prefix{}) || !cfg.Fits6(netip.MustParsePrefix("fc00:5:0:1::/64")) {
		t.Error("an IPv6-only network fits an IPv4 subnet, or not its IPv6 ones")
	}
}

// TestParseConfigIPv6Errors: every rule flannel has for the IPv6 half, each
// error naming its key.
func TestParseConfigIPv6Errors(t *testing.T) {
	base := `"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true`
	for _, tt := range []struct{ name, json, want string }{
		{"no family", `{"EnableIPv4":false,"Network":"10.5.0.0/16"}`, `keys "EnableIPv4" and "EnableIPv6": both are false, which leaves no address family`},
		{"IPv6-only without network", `{"EnableIPv4":false,"EnableIPv6":true,"Backend":{"Type":"vxlan"}}`, `key "IPv6Network" is missing`},
		{"missing network", `{` + base + `}`, `key "IPv6Network" is missing`},
		{"network not cidr", `{` + base + `,"IPv6Network":"fc00::"}`, `key "IPv6Network": "fc00::" is not an IPv6 CIDR`},
		{"network ipv4", `{` + base + `,"IPv6Network":"10.6.0.0/16"}`, `is not an IPv6 CIDR`},
		{"network too small", `{` + base + `,"IPv6Network":"fc00::/125"}`, `key "IPv6Network": fc00::/125 is too small; the smallest useful IPv6Network is a /124`},
		{"subnetlen 127", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}`, `key "IPv6SubnetLen": 127 is out of range`},
		{"subnetlen too wide", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetLen":49}`, `key "IPv6SubnetLen": /49 leaves IPv6Network fc00::/48 room for fewer than four subnets; use /50`},
		{"subnetlen wrong type", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetLen":"64"}`, `key "IPv6SubnetLen": expected a int`},
		{"min outside", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::"}`, `key "IPv6SubnetMin": fc01:: is outside IPv6Network fc00::/48`},
		{"max unaligned", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:5::1"}`, `key "IPv6SubnetMax": fc00:0:0:5::1 is not on a /64 boundary`},
		{"min not ipv6", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetMin":"10.5.1.0"}`, `key "IPv6SubnetMin": "10.5.1.0" is not an IPv6 address`},
		{"min above max", `{` + base + `,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:3::"}`, `IPv6SubnetMin fc00:0:0:9:: is above IPv6SubnetMax fc00:0:0:3::`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseConfig([]byte(tt.json)); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseConfig(%s) = %v, want %q", tt.json, err, tt.want)
			}
		})
	}
}

// TestParseConfigPeersNetwork: "PeersNetwork" is an IPv4 CIDR outside the
// Network, for the wireguard backend; errors name the key.
func TestParseConfigPeersNetwork(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.1/24","Backend":{"Type":"wireguard"}}`))
	if err != nil || cfg.PeersNetwork.String() != "10.6.0.0/24" {
		t.Fatalf("PeersNetwork = %v %v", cfg, err)
	}
	for raw, want := range map[string]string{
		`{"Network":"10.5.0.0/16","PeersNetwork":"10.5.9.0/24","Backend":{"Type":"wireguard"}}`: `key "PeersNetwork": 10.5.9.0/24 overlaps Network 10.5.0.0/16`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"fc00::/64","Backend":{"Type":"wireguard"}}`:   `key "PeersNetwork": "fc00::/64" is not an IPv4 CIDR`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.0/31","Backend":{"Type":"wireguard"}}`: `key "PeersNetwork": 10.6.0.0/31 holds no peer`,
		// Issue 30, item 9: every host routes PeersNetwork into WireGuard.
		`{"Network":"10.5.0.0/16","PeersNetwork":"128.0.0.0/1","Backend":{"Type":"wireguard"}}`:    `key "PeersNetwork": 128.0.0.0/1 is wider than a /16`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"224.0.0.0/24","Backend":{"Type":"wireguard"}}`:   `key "PeersNetwork": 224.0.0.0/24 is not unicast space`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"127.0.0.0/16","Backend":{"Type":"wireguard"}}`:   `key "PeersNetwork": 127.0.0.0/16 is not unicast space`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"169.254.0.0/24","Backend":{"Type":"wireguard"}}`: `key "PeersNetwork": 169.254.0.0/24 is not unicast space`,
		`{"Network":"10.5.0.0/16","PeersNetwork":"0.0.0.0/24","Backend":{"Type":"wireguard"}}`:     `key "PeersNetwork": 0.0.0.0/24 is not unicast space`,
	} {
		if _, err := ParseConfig([]byte(raw)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConfig(%s) = %v, want %q", raw, err, want)
		}
	}
}

// TestOutsidePeerChecks: a stored outside peer reads back, and a bad name,
// key or address is named; free addresses skip the network's first and
// last and those taken.
func TestOutsidePeerChecks(t *testing.T) {
	cfg, _ := ParseConfig([]byte(`{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.0/30","Backend":{"Type":"wireguard"}}`))
	key := "V/Tff9mTqs7y49FSXReDz46kPIvJC4BUS16h60XOFTQ="
	p := OutsidePeer{Name: "laptop", PublicKey: key, Address: netip.MustParsePrefix("10.6.0.1/32")}
	back, err := DecodeOutsidePeer("laptop", p.Encode())
	if err != nil || back != p || p.Check(cfg) != nil {
		t.Fatalf("round trip %+v %v, check %v", back, err, p.Check(cfg))
	}
	for _, bad := range []OutsidePeer{
		{Name: "../x", PublicKey: key, Address: p.Address},
		{Name: "x", PublicKey: "short", Address: p.Address},
		{Name: "x", PublicKey: key, Address: netip.MustParsePrefix("10.7.0.1/32")},
		{Name: "x", PublicKey: key + "\n[Interface]", Address: p.Address},
		{Name: "x", PublicKey: key, Address: p.Address, Endpoint: netip.MustParseAddrPort("[2001:db8::1%eth0]:51820")},
		{Name: "x", PublicKey: key, Address: p.Address, Endpoint: netip.MustParseAddrPort("[::ffff:10.5.0.1]:51820")},
	} {
		if bad.Check(cfg) == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	// Issue 30, item 2: a zone in a stored Endpoint is refused where the
	// record is decoded, whoever wrote it.
	for _, endpoint := range []string{`[2001:db8::9%a]:1\nallowed_ip=0.0.0.0/0\n]:51820`, `[fe80::1%eth0]:51820`} {
		value := `{"PublicKey":"` + key + `","Address":"10.6.0.1/32","Endpoint":"` + endpoint + `"}`
		if _, err := DecodeOutsidePeer("laptop", []byte(value)); !errors.Is(err, ErrBadLease) || !strings.Contains(err.Error(), "zone") {
			t.Errorf("Endpoint %q decoded: %v", endpoint, err)
		}
	}
	if a, err := FreePeerAddress(cfg, nil); err != nil || a.String() != "10.6.0.1/32" {
		t.Errorf("first free address %v %v", a, err)
	}
	if a, err := FreePeerAddress(cfg, []OutsidePeer{p}); err != nil || a.String() != "10.6.0.2/32" {
		t.Errorf("second free address %v %v", a, err)
	}
	if _, err := FreePeerAddress(cfg, []OutsidePeer{p, {Address: netip.MustParsePrefix("10.6.0.2/32")}}); err == nil {
		t.Error("a full PeersNetwork gave an address")
	}
}
