package main

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// TestPathLogSaysEachPeerInClearOnce: on a vxlan network each peer is
// logged in clear once, not again at the next apply or a resync, again
// when it changes, and forgotten when it leaves.
func TestPathLogSaysEachPeerInClearOnce(t *testing.T) {
	cfg, err := backends.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p := newPathLog(backends.NewPathRule(cfg, underlay.ExternalInterface{Name: "eth0"}), slog.New(slog.NewTextHandler(&logs, nil)))
	a := mesh.Peer{Key: "10.5.2.0-24", PublicIP: netip.MustParseAddr("192.168.50.2")}
	b := mesh.Peer{Key: "10.5.3.0-24", PublicIP: netip.MustParseAddr("192.168.50.3")}
	p.peersChanged(nil, []mesh.Peer{a, b})
	p.peersChanged(nil, []mesh.Peer{a}) // a whole apply naming a again as changed
	p.peersChanged([]mesh.Peer{b}, nil)
	p.peersChanged(nil, []mesh.Peer{b})
	if n := strings.Count(logs.String(), "peer in clear"); n != 3 {
		t.Errorf("%d lines, want a and b once, and b again after it left and came back:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `why="its lease names the vxlan backend, which does not encrypt"`) {
		t.Errorf("the reason is not named:\n%s", logs.String())
	}
}
