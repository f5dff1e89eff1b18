package liveswitch

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// recorder is a backend that logs what it is asked to apply.
type recorder struct {
	name string
	log  *[]string
}

func (r recorder) Setup(context.Context) error  { return nil }
func (r recorder) BackendData() json.RawMessage { return json.RawMessage(`"` + r.name + `"`) }
func (r recorder) MTU() int                     { return 1420 }
func (r recorder) Cleanup(context.Context) error {
	*r.log = append(*r.log, r.name+" cleanup")
	return nil
}
func (r recorder) Close() error { return nil }
func (r recorder) Apply(_ context.Context, d mesh.Desired) error {
	*r.log = append(*r.log, r.name+" apply "+keysOf(d.Peers))
	return nil
}
func (r recorder) ApplyDelta(_ context.Context, d mesh.Delta) error {
	*r.log = append(*r.log, fmt.Sprintf("%s delta -%s +%s", r.name, keysOf(d.Old), keysOf(d.New)))
	return nil
}

func keysOf(peers []mesh.Peer) string {
	var out []string
	for _, p := range peers {
		out = append(out, p.Key)
	}
	return "[" + strings.Join(out, " ") + "]"
}

// TestSwitchingCarriesEachPeerOnItsPath: during a switch each backend
// gets the peers whose path is its own; a peer that moves is added to its
// new backend before it leaves the old one; a retired backend is cleaned
// up and gets nothing more.
func TestSwitchingCarriesEachPeerOnItsPath(t *testing.T) {
	var log []string
	wg, vx := recorder{"wireguard", &log}, recorder{"vxlan", &log}
	s := NewSwitching(backends.WireGuard, wg, []string{backends.VXLAN}, map[string]backends.Backend{backends.VXLAN: vx})
	peer := func(key, path string) mesh.Peer {
		return mesh.Peer{Key: key, Path: path, Subnet: netip.MustParsePrefix("10.5.2.0/24")}
	}
	ctx := context.Background()
	s.Apply(ctx, mesh.Desired{Peers: []mesh.Peer{peer("a", backends.WireGuard), peer("b", backends.VXLAN), peer("c", backends.VXLAN)}})
	// b switches (its lease gains WeftAlso wireguard), c leaves.
	s.ApplyDelta(ctx, mesh.Delta{Old: []mesh.Peer{peer("b", backends.VXLAN), peer("c", backends.VXLAN)}, New: []mesh.Peer{peer("b", backends.WireGuard)}})
	s.Retire(ctx, backends.VXLAN)
	s.ApplyDelta(ctx, mesh.Delta{New: []mesh.Peer{peer("d", backends.WireGuard)}})
	want := []string{
		"wireguard apply [a]", "vxlan apply [b c]",
		"wireguard delta -[] +[b]", "vxlan delta -[b c] +[]",
		"vxlan cleanup",
		"wireguard delta -[] +[d]",
	}
	if strings.Join(log, "\n") != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
	}
	if paths := s.Paths(); len(paths) != 1 || paths[0].BackendType != backends.WireGuard {
		t.Errorf("paths after the retirement: %+v", paths)
	}
}

// TestSwitchingStandby: a peer carried by the legacy backend whose lease
// also names the primary (it has switched, this host not yet moved it) is
// prepared on the primary as a standby copy with the primary's data, so
// it can answer there the moment it moves; a peer that speaks only the
// legacy backend is not.
func TestSwitchingStandby(t *testing.T) {
	var log []string
	wg, vx := standbyRecorder{recorder{"wireguard", &log}}, standbyRecorder{recorder{"vxlan", &log}}
	s := NewSwitching(backends.WireGuard, wg, []string{backends.VXLAN}, map[string]backends.Backend{backends.VXLAN: vx})
	both := mesh.Peer{Key: "10.5.2.0-24", Path: backends.VXLAN, BackendType: backends.VXLAN, BackendData: json.RawMessage(`{"VNI":1}`),
		Subnet: netip.MustParsePrefix("10.5.2.0/24")}.WithAlternatives([]lease.PathAttrs{{BackendType: backends.WireGuard,
		BackendData: json.RawMessage(`{"PublicKey":"k","Port":51820}`)}})
	vxOnly := mesh.Peer{Key: "10.5.3.0-24", Path: backends.VXLAN, BackendType: backends.VXLAN, Subnet: netip.MustParsePrefix("10.5.3.0/24")}
	if err := s.Apply(context.Background(), mesh.Desired{Peers: []mesh.Peer{both, vxOnly}}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`wireguard apply 10.5.2.0-24 standby {"PublicKey":"k","Port":51820}`,
		`vxlan apply 10.5.2.0-24 {"VNI":1}`, `vxlan apply 10.5.3.0-24 `,
	}
	if strings.Join(log, "\n") != strings.Join(want, "\n") {
		t.Errorf("applied:\n%s\nwant:\n%s", strings.Join(log, "\n"), strings.Join(want, "\n"))
	}
}

// standbyRecorder logs each peer applied, with its data and whether it
// is a standby copy.
type standbyRecorder struct{ recorder }

func (r standbyRecorder) Apply(_ context.Context, d mesh.Desired) error {
	for _, p := range d.Peers {
		standby := ""
		if p.Standby {
			standby = "standby "
		}
		*r.log = append(*r.log, fmt.Sprintf("%s apply %s %s%s", r.name, p.Key, standby, p.BackendData))
	}
	return nil
}
