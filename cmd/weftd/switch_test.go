package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
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
		if got := string(switchAttrs(base, tt.paths, tt.visible, tt.published).Encode()); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

// TestChangedOptions: the options of two Backend objects that differ,
// keys matched as encoding/json matches them (any case), Type left out;
// only the ones that cut pairs are warned about.
func TestChangedOptions(t *testing.T) {
	got := changedOptions(json.RawMessage(`{"Type":"wireguard","PSK":"a","MTU":1400,"ListenPort":51820}`),
		json.RawMessage(`{"type":"wireguard", "psk":"b","MTU": 1400,"PersistentKeepaliveInterval":25}`))
	if want := []string{"listenport", "persistentkeepaliveinterval", "psk"}; !slices.Equal(got, want) {
		t.Errorf("changed options = %v, want %v", got, want)
	}
	var buf bytes.Buffer
	logOptionGaps(got, slog.New(slog.NewTextHandler(&buf, nil)))
	if out := buf.String(); strings.Count(out, "not gapless") != 2 || !strings.Contains(out, "option=psk") || strings.Contains(out, "persistentkeepalive") {
		t.Errorf("warnings:\n%s\nwant one for psk and one for listenport", out)
	}
}
