package liveswitch

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/lease"
)

// TestSwitchAttrs: during a switch from vxlan to wireguard the lease shows
// vxlan's type and data, as flanneld reads them, and names wireguard in
// WeftAlso only once it is published; a switch back shows the visible
// backend whichever it is; udp, untyped, shows no BackendType.
func TestSwitchAttrs(t *testing.T) {
	base := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.2")}
	wg := lease.PathAttrs{BackendType: "wireguard", BackendData: json.RawMessage(`{"PublicKey":"k","Port":51820}`)}
	vx := lease.PathAttrs{BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)}
	udp := lease.PathAttrs{BackendType: "udp"}
	for _, tt := range []struct {
		name      string
		paths     []lease.PathAttrs
		visible   string
		published bool
		want      string
	}{
		{"before publishing", []lease.PathAttrs{wg, vx}, "vxlan", false,
			`{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}`},
		{"published", []lease.PathAttrs{wg, vx}, "vxlan", true,
			`{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"},"WeftAlso":[{"BackendType":"wireguard","BackendData":{"PublicKey":"k","Port":51820}}]}`},
		{"legacy retired", []lease.PathAttrs{wg}, "wireguard", true,
			`{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"k","Port":51820}}`},
		{"switching back, the new one visible", []lease.PathAttrs{vx, wg}, "vxlan", false,
			`{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"},"WeftAlso":[{"BackendType":"wireguard","BackendData":{"PublicKey":"k","Port":51820}}]}`},
		{"from udp, which writes no BackendType", []lease.PathAttrs{wg, udp}, "udp", true,
			`{"PublicIP":"192.168.50.2","PublicIPv6":null,"WeftAlso":[{"BackendType":"wireguard","BackendData":{"PublicKey":"k","Port":51820}}]}`},
	} {
		if got := string(Attrs(base, tt.paths, tt.visible, tt.published).Encode()); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}
