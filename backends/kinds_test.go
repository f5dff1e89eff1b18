package backends

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/weftnet/weft/lease"
)

// TestCheckConfig: the checks a config's backend takes, each error naming
// its key and wrapping lease.ErrInvalidConfig.
func TestCheckConfig(t *testing.T) {
	for _, tt := range []struct{ name, json, want string }{
		{"unknown backend", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipsec"}}`, `key "Backend.Type": unknown backend "ipsec"; valid types are alloc, extension, host-gw, ipip, udp, vxlan, wireguard`},
		{"IPv6-only udp", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}`, `key "EnableIPv6": the udp backend carries IPv4 only`},
		{"udp", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}`, `key "EnableIPv6": the udp backend carries IPv4 only (as flannel's does); use host-gw, vxlan, wireguard for IPv6`},
		{"ipip", `{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"},"EnableIPv6":true,"IPv6Network":"fc00::/48"}`, `key "EnableIPv6": the ipip backend carries IPv4 only (as flannel's does); use host-gw, vxlan, wireguard for IPv6`},
		{"PeersNetwork on vxlan", `{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.0/24","Backend":{"Type":"vxlan"}}`, `key "PeersNetwork": outside peers join through WireGuard`},
		{"strict on vxlan", `{"Network":"10.5.0.0/16","StrictEncryption":true,"Backend":{"Type":"vxlan"}}`, `key "StrictEncryption": the vxlan backend does not encrypt; strict encryption needs "Backend": {"Type": "wireguard"}`},
		{"strict on the default", `{"Network":"10.5.0.0/16","StrictEncryption":true}`, `key "StrictEncryption": the udp backend does not encrypt`},
		{"strict with DirectRouting", `{"Network":"10.5.0.0/16","StrictEncryption":true,"Backend":{"Type":"wireguard","DirectRouting":true}}`, `key "Backend.DirectRouting": it routes peers on the same network in clear, which "StrictEncryption" forbids`},
	} {
		cfg, err := ParseConfig([]byte(tt.json))
		if err == nil {
			err = ValidateOptions(cfg)
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, lease.ErrInvalidConfig) {
			t.Errorf("%s: got %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestStrictEncryptionOnWireGuard: strict encryption is a wireguard
// network's, on either firewall mode.
func TestStrictEncryptionOnWireGuard(t *testing.T) {
	for _, config := range []string{
		`{"Network":"10.5.0.0/16","StrictEncryption":true,"Backend":{"Type":"wireguard"}}`,
		`{"Network":"10.5.0.0/16","StrictEncryption":true,"EnableNFTables":true,"Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}`,
	} {
		cfg, err := ParseConfig([]byte(config))
		if err == nil {
			err = ValidateOptions(cfg)
		}
		if err != nil || !cfg.StrictEncryption {
			t.Errorf("%s: %v", config, err)
		}
	}
}

// TestIPv6AllocAndExtension: alloc and extension take a dual-stack or
// IPv6-only config, as flannel's do: their routing is someone else's.
func TestIPv6AllocAndExtension(t *testing.T) {
	for _, backend := range []string{Alloc, Extension} {
		for _, config := range []string{
			`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"` + backend + `"}}`,
			`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"` + backend + `"}}`,
		} {
			if cfg, err := ParseConfig([]byte(config)); err != nil || !cfg.EnableIPv6 {
				t.Errorf("%s: %v", config, err)
			}
		}
	}
}

// TestLeaseTypes: udp and alloc hosts write no BackendType, as flannel's
// do; every other backend writes its name. The default backend is lease's.
func TestLeaseTypes(t *testing.T) {
	if UDP != lease.DefaultBackend {
		t.Errorf("the default backend is %q, lease says %q", UDP, lease.DefaultBackend)
	}
	for _, kind := range Kinds {
		cfg, err := ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"` + kind.Name + `"}}`))
		if err != nil {
			t.Fatal(err)
		}
		want := kind.Name
		if kind.Name == UDP || kind.Name == Alloc {
			want = ""
		}
		if got := cfg.Backend.LeaseType(); got != want {
			t.Errorf("a %s host writes BackendType %q, want %q", kind.Name, got, want)
		}
		if _, ok := Constructors()[kind.Name]; !ok {
			t.Errorf("backend %s has no constructor", kind.Name)
		}
	}
	if len(Constructors()) != len(Kinds) {
		t.Errorf("%d constructors for %d kinds", len(Constructors()), len(Kinds))
	}
}

// TestLeaseNamesNoBackendButItsDefault: the backends' facts live here, in
// Kinds; lease's code (tests aside) spells no backend's name but
// lease.DefaultBackend's, so adding a backend touches nothing in lease.
func TestLeaseNamesNoBackendButItsDefault(t *testing.T) {
	fset := token.NewFileSet()
	files := 0
	err := filepath.WalkDir("../lease", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		files++
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			text, _ := strconv.Unquote(lit.Value)
			for _, kind := range Kinds {
				if kind.Name != lease.DefaultBackend && strings.Contains(text, `"`+kind.Name+`"`) || text == kind.Name && kind.Name != lease.DefaultBackend {
					t.Errorf("%s: lease names the %s backend (%s); its facts belong in backends.Kinds", fset.Position(lit.Pos()), kind.Name, lit.Value)
				}
			}
			return true
		})
		return nil
	})
	if err != nil || files < 10 {
		t.Fatalf("read %d files of lease: %v", files, err)
	}
}
