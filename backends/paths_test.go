package backends

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// TestPathRule: a wireguard peer is encrypted unless DirectRouting
// reaches it on the external interface's network; a peer of any other
// backend goes in clear, and the reason names the backend.
func TestPathRule(t *testing.T) {
	ext := underlay.ExternalInterface{Name: "eth0", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}}
	near := mesh.Peer{Key: "near", PublicIP: netip.MustParseAddr("192.168.50.2")}
	far := mesh.Peer{Key: "far", PublicIP: netip.MustParseAddr("10.99.0.2")}
	for _, tt := range []struct {
		config     string
		peer       mesh.Peer
		path       string
		encrypted  bool
		whyContain string
	}{
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`, near, WireGuard, true, ""},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","DirectRouting":true}}`, near, PathDirect, false, "DirectRouting"},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","DirectRouting":true}}`, far, WireGuard, true, ""},
		{`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, far, VXLAN, false, "names the vxlan backend, which does not encrypt"},
		{`{"Network":"10.5.0.0/16"}`, near, UDP, false, "udp"},
	} {
		cfg, err := ParseConfig([]byte(tt.config))
		if err != nil {
			t.Fatal(err)
		}
		got := NewPathRule(cfg, ext).Of(tt.peer)
		if got.Name != tt.path || got.Encrypted != tt.encrypted || (tt.whyContain == "") != (got.Why == "") ||
			!strings.Contains(got.Why, tt.whyContain) {
			t.Errorf("%s, peer %s: %+v, want %s encrypted=%v why ~%q", tt.config, tt.peer.Key, got, tt.path, tt.encrypted, tt.whyContain)
		}
	}
}
