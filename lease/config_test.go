package lease

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name, json            string
		subnetLen             int
		min, max, backendType string
		defaulted             bool
	}{
		{"slash16 gets /24", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`, 24, "10.5.1.0", "10.5.255.0", "host-gw", false},
		{"no backend means udp", `{"Network":"10.5.0.0/16"}`, 24, "10.5.1.0", "10.5.255.0", "udp", true},
		{"backend without type means udp", `{"Network":"10.5.0.0/16","Backend":{"Port":1}}`, 24, "10.5.1.0", "10.5.255.0", "udp", true},
		{"slash22 still /24", `{"Network":"10.5.0.0/22"}`, 24, "10.5.1.0", "10.5.3.0", "udp", true},
		{"slash24 splits into four", `{"Network":"10.5.0.0/24"}`, 26, "10.5.0.64", "10.5.0.192", "udp", true},
		{"slash28 smallest", `{"Network":"10.5.0.0/28"}`, 30, "10.5.0.4", "10.5.0.12", "udp", true},
		{"explicit range", `{"Network":"10.5.0.0/16","SubnetLen":25,"SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.128","Backend":{"Type":"vxlan","VNI":4}}`, 25, "10.5.10.0", "10.5.20.128", "vxlan", false},
		{"zero SubnetLen means default", `{"Network":"10.5.0.0/16","SubnetLen":0,"Backend":{"Type":"wireguard"}}`, 24, "10.5.1.0", "10.5.255.0", "wireguard", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.SubnetLen != tt.subnetLen || cfg.SubnetMin.String() != tt.min || cfg.SubnetMax.String() != tt.max {
				t.Errorf("got len %d range %s-%s, want %d %s-%s", cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, tt.subnetLen, tt.min, tt.max)
			}
			if cfg.Backend.Type != tt.backendType || cfg.BackendDefaulted != tt.defaulted {
				t.Errorf("backend %q defaulted=%v, want %q %v", cfg.Backend.Type, cfg.BackendDefaulted, tt.backendType, tt.defaulted)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct{ name, json, want string }{
		{"truncated", `{"Network":"10.5.0.0/16"`, "not valid JSON"},
		{"empty", ``, "not valid JSON"},
		{"missing network", `{"SubnetLen":24}`, `key "Network" is missing`},
		{"network not cidr", `{"Network":"10.5.0.0"}`, `key "Network": "10.5.0.0" is not an IPv4 CIDR`},
		{"network wrong type", `{"Network":5}`, `key "Network": expected a string, got a JSON number`},
		{"network ipv6", `{"Network":"fd00::/64"}`, `is not an IPv4 CIDR`},
		{"network too small", `{"Network":"10.5.0.0/29"}`, `too small; the smallest useful Network is a /28`},
		{"subnetlen 31", `{"Network":"10.5.0.0/16","SubnetLen":31}`, `key "SubnetLen": 31 is out of range`},
		{"subnetlen negative", `{"Network":"10.5.0.0/16","SubnetLen":-3}`, `key "SubnetLen": -3 is out of range`},
		{"subnetlen too wide", `{"Network":"10.5.0.0/16","SubnetLen":17}`, `key "SubnetLen": /17 leaves Network 10.5.0.0/16 room for fewer than four subnets; use /18`},
		{"subnetlen wrong type", `{"Network":"10.5.0.0/16","SubnetLen":"24"}`, `key "SubnetLen": expected a int`},
		{"subnetlen huge", `{"Network":"10.5.0.0/16","SubnetLen":99999999999999999999}`, `key "SubnetLen"`},
		{"min outside", `{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}`, `key "SubnetMin": 10.6.0.0 is outside Network 10.5.0.0/16`},
		{"max outside", `{"Network":"10.5.0.0/16","SubnetMax":"10.4.0.0"}`, `key "SubnetMax": 10.4.0.0 is outside Network`},
		{"min unaligned", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.7"}`, `key "SubnetMin": 10.5.1.7 is not on a /24 boundary`},
		{"min not ip", `{"Network":"10.5.0.0/16","SubnetMin":"banana"}`, `key "SubnetMin": "banana" is not an IPv4 address`},
		{"min above max", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0"}`, `SubnetMin 10.5.9.0 is above SubnetMax 10.5.3.0`},
		{"backend not object", `{"Network":"10.5.0.0/16","Backend":"vxlan"}`, `key "Backend": must be an object`},
		{"enormous", `{"Network":"10.5.0.0/16","Pad":"` + strings.Repeat("x", 70000) + `"}`, `more than the 65536`},
		{"trailing bytes", `{"Network":"10.5.0.0/16"} {"Network":"10.6.0.0/16"}`, `bytes after the JSON object, at offset 25`},
		{"trailing junk", "{\"Network\":\"10.5.0.0/16\"}\n]", `at offset 25 ("]")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("accepted %s", tt.json)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
		})
	}
}

func TestConfigFits(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","SubnetMin":"10.5.2.0","SubnetMax":"10.5.9.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	for s, want := range map[string]bool{
		"10.5.2.0/24": true, "10.5.9.0/24": true, "10.5.1.0/24": false, "10.5.10.0/24": false,
		"10.5.3.0/25": false, "10.6.3.0/24": false,
	} {
		if got := cfg.Fits(netip.MustParsePrefix(s)); got != want {
			t.Errorf("Fits(%s) = %v, want %v", s, got, want)
		}
	}
	if cfg.Subnets() != 8 {
		t.Errorf("Subnets() = %d, want 8", cfg.Subnets())
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{`{"Network":"10.5.0.0/16"}`, `{"Network":"10.5.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan"}}`,
		`{"Network":"10.0.0.0/8","SubnetMin":"10.0.1.0","SubnetMax":"10.255.255.0"}`, `{"Network":[]}`, `nul`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			return
		}
		// Whatever parses must describe a usable pool.
		if !cfg.Fits(netip.PrefixFrom(cfg.SubnetMin, cfg.SubnetLen)) || cfg.Subnets() < 1 {
			t.Fatalf("accepted config with unusable pool: %+v", cfg)
		}
	})
}

// TestConfigReadAsFlannel: configs flannel accepts are accepted, read as
// flannel reads them, and what was read differently is noted for the log.
func TestConfigReadAsFlannel(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"10.5.1.0/16","Backend":{"Type":"VXLAN","VNI":4}}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Network != netip.MustParsePrefix("10.5.0.0/16") || cfg.Backend.Type != "vxlan" {
		t.Errorf("read as %s %s", cfg.Network, cfg.Backend.Type)
	}
	want := []string{
		`key "Network": 10.5.1.0/16 has host bits set; using 10.5.0.0/16, as flannel does`,
		`key "Backend.Type": "VXLAN" read as "vxlan", as flannel does`,
	}
	if strings.Join(cfg.Notes, "\n") != strings.Join(want, "\n") {
		t.Errorf("notes:\n%s\nwant:\n%s", strings.Join(cfg.Notes, "\n"), strings.Join(want, "\n"))
	}
	if cfg, _ := ParseConfig([]byte(`{"Network":"10.5.0.0/16"}`)); len(cfg.Notes) != 0 {
		t.Errorf("notes for a config read as written: %v", cfg.Notes)
	}
}

// TestEnableNFTables: flannel's key is read in both families' configs and
// a wrong type is named.
func TestEnableNFTables(t *testing.T) {
	for config, want := range map[string]bool{
		`{"Network":"10.5.0.0/16"}`:                       false,
		`{"Network":"10.5.0.0/16","EnableNFTables":true}`: true,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"vxlan"},"EnableNFTables":true}`: true,
	} {
		cfg, err := ParseConfig([]byte(config))
		if err != nil || cfg.EnableNFTables != want {
			t.Errorf("%s: %+v %v", config, cfg, err)
		}
	}
	if _, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableNFTables":"yes"}`)); err == nil || !strings.Contains(err.Error(), `key "EnableNFTables"`) {
		t.Errorf("a string for EnableNFTables: %v", err)
	}
}
