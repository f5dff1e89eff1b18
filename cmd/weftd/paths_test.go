package main

import (
	"bytes"
	"fmt"
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
	a2 := a
	a2.PublicIP = netip.MustParseAddr("192.168.50.22")
	p.peersChanged(nil, []mesh.Peer{a, b})
	p.peersChanged([]mesh.Peer{a}, []mesh.Peer{a2}) // a changed, for the same reason
	p.peersChanged([]mesh.Peer{b}, nil)
	p.peersChanged(nil, []mesh.Peer{b})
	if n := strings.Count(logs.String(), "peer in clear"); n != 3 {
		t.Errorf("%d lines, want a and b once, and b again after it left and came back:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `why="its lease names the vxlan backend, which does not encrypt"`) {
		t.Errorf("the reason is not named:\n%s", logs.String())
	}
	// DirectRouting's reason names the address: a move is said again.
	direct, err := backends.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","DirectRouting":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	ext := underlay.ExternalInterface{Name: "eth0", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.50.1/24")}}
	d := newPathLog(backends.NewPathRule(direct, ext), slog.New(slog.NewTextHandler(&logs, nil)))
	d.peersChanged(nil, []mesh.Peer{a})
	d.peersChanged([]mesh.Peer{a}, []mesh.Peer{a2})
	if n := strings.Count(logs.String(), "peer in clear"); n != 2 || !strings.Contains(logs.String(), "192.168.50.22") {
		t.Errorf("want a logged, and again at its new address:\n%s", logs.String())
	}
}

// TestPathLogSummarizesManyPeers: a start among thousands of vxlan peers
// logs one line with their count, not one line each; a later single
// change is named on its own line again.
func TestPathLogSummarizesManyPeers(t *testing.T) {
	cfg, err := backends.ParseConfig([]byte(`{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p := newPathLog(backends.NewPathRule(cfg, underlay.ExternalInterface{Name: "eth0"}), slog.New(slog.NewTextHandler(&logs, nil)))
	var peers []mesh.Peer
	for i := range 5000 {
		peers = append(peers, mesh.Peer{Key: fmt.Sprintf("10.%d.%d.0-24", 1+i/256, i%256), PublicIP: netip.AddrFrom4([4]byte{172, 16, byte(i / 250), byte(1 + i%250)})})
	}
	p.peersChanged(nil, peers)
	if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "peers in clear") || !strings.Contains(logs.String(), "count=5000") ||
		!strings.Contains(logs.String(), "(4984 more)") {
		t.Fatalf("want one line counting 5000 peers and naming 16:\n%.2000s", logs.String())
	}
	logs.Reset()
	extra := mesh.Peer{Key: "10.200.0.0-24", PublicIP: netip.MustParseAddr("172.16.250.1")}
	p.peersChanged(nil, []mesh.Peer{extra})
	if got := logs.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, "msg=\"peer in clear\" lease=10.200.0.0-24") {
		t.Errorf("want the one new peer on its own line:\n%s", got)
	}
}
