package vxlan

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

func vxPeer(subnet, ip, data string) mesh.Peer {
	p := netip.MustParsePrefix(subnet)
	return mesh.Peer{Key: strings.ReplaceAll(p.String(), "/", "-"), Subnet: p, PublicIP: netip.MustParseAddr(ip),
		BackendType: "vxlan", BackendData: json.RawMessage(data)}
}

var testExt = underlay.ExternalInterface{Name: "ext0", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}}

func render(s State) string {
	var b strings.Builder
	for _, r := range s.Routes() {
		fmt.Fprintf(&b, "route %s via %s direct=%v\n", r.Dst, r.Via, r.Direct)
	}
	for _, n := range s.Neighbors() {
		fmt.Fprintf(&b, "neigh %s lladdr %s\n", n.IP, n.MAC)
	}
	for _, f := range s.FDB() {
		fmt.Fprintf(&b, "fdb %s dst %s\n", f.MAC, f.Dst)
	}
	return b.String()
}

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions(json.RawMessage(`{"Type":"vxlan"}`))
	if err != nil || o.VNI != 1 || o.Port != 8472 || o.DeviceName() != "weft.1" {
		t.Fatalf("defaults %+v %v", o, err)
	}
	for raw, want := range map[string]string{
		`{"VNI":16777216}`: `key "Backend.VNI": 16777216`,
		`{"Port":-1}`:      `key "Backend.Port": -1`,
		`{"MTU":10}`:       `key "Backend.MTU": 10`,
		`{"VNI":"one"}`:    `vxlan Backend options`,
	} {
		if _, err := ParseOptions(json.RawMessage(raw)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseOptions(%s) = %v, want %q", raw, err, want)
		}
	}
}

func TestStableMAC(t *testing.T) {
	a := StableMAC(netip.MustParseAddr("192.168.50.11"), 1)
	if a.String() != StableMAC(netip.MustParseAddr("192.168.50.11"), 1).String() {
		t.Fatal("MAC not stable")
	}
	if a.String() == StableMAC(netip.MustParseAddr("192.168.50.12"), 1).String() {
		t.Fatal("two hosts share a MAC")
	}
	if a[0]&0x02 == 0 || a[0]&0x01 != 0 {
		t.Fatalf("MAC %s is not locally administered unicast", a)
	}
	if got := string(EncodeBackendData(1, a)); got != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, a) {
		t.Fatalf("BackendData = %s", got)
	}
}

func TestPlan(t *testing.T) {
	d := mesh.Desired{Peers: []mesh.Peer{
		vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`),
		vxPeer("10.5.3.0/24", "10.200.0.3", `{"VNI":1,"VtepMAC":"02:00:00:00:00:03"}`),
		vxPeer("10.5.4.0/24", "192.168.77.4", `{"VNI":2,"VtepMAC":"02:00:00:00:00:04"}`),
		vxPeer("10.5.5.0/24", "192.168.77.5", `{"VNI":1,"VtepMAC":"not-a-mac"}`),
		vxPeer("10.5.6.0/24", "192.168.77.6", `[]`),
	}}
	state, problems := Plan(d, Options{VNI: 1}, testExt)
	want := `route 10.5.2.0/24 via 10.5.2.0 direct=false
route 10.5.3.0/24 via 10.5.3.0 direct=false
neigh 10.5.2.0 lladdr 02:00:00:00:00:02
neigh 10.5.3.0 lladdr 02:00:00:00:00:03
fdb 02:00:00:00:00:02 dst 192.168.77.2
fdb 02:00:00:00:00:03 dst 10.200.0.3
`
	if got := render(state); got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
	text := fmt.Sprint(problems)
	for _, frag := range []string{"peer 10.5.4.0-24: VNI 2, this host uses 1", `peer 10.5.5.0-24: VtepMAC "not-a-mac" is not a MAC address`, "peer 10.5.6.0-24: BackendData"} {
		if !strings.Contains(text, frag) {
			t.Errorf("problems lack %q: %s", frag, text)
		}
	}
	// DirectRouting: the on-link peer gets a plain route, the other stays encapsulated.
	state, _ = Plan(mesh.Desired{Peers: d.Peers[:2]}, Options{VNI: 1, DirectRouting: true}, testExt)
	want = `route 10.5.2.0/24 via 192.168.77.2 direct=true
route 10.5.3.0/24 via 10.5.3.0 direct=false
neigh 10.5.3.0 lladdr 02:00:00:00:00:03
fdb 02:00:00:00:00:03 dst 10.200.0.3
`
	if got := render(state); got != want {
		t.Errorf("direct routing plan:\n%s\nwant:\n%s", got, want)
	}
}

// TestPortZeroIsTheKernelDefault: flannel hands Port 0 to the kernel,
// whose default is 8472.
func TestPortZeroIsTheKernelDefault(t *testing.T) {
	o, err := ParseOptions(json.RawMessage(`{"Type":"vxlan","Port":0}`))
	if err != nil || o.Port != 8472 || !o.PortDefaulted {
		t.Fatalf("Port 0: %+v, %v; want 8472, noted", o, err)
	}
}

// TestDuplicateVtepMAC: of two leases publishing one VTEP MAC, the one
// created first keeps it and the other is skipped, naming both; a delta
// that brings or removes a duplicate asks for a whole apply.
func TestDuplicateVtepMAC(t *testing.T) {
	older := vxPeer("10.5.9.0/24", "192.168.77.9", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)
	older.Created = 3
	newer := vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)
	newer.Created = 5
	d := mesh.Desired{Peers: []mesh.Peer{newer, older}}
	state, problems := Plan(d, Options{VNI: 1}, testExt)
	if len(state.FDB()) != 1 || state.FDB()[0].Dst != older.PublicIP {
		t.Errorf("FDB %+v, want only the older lease's", state.FDB())
	}
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), "peer 10.5.2.0-24: VtepMAC 02:00:00:00:00:02 is also published by 10.5.9.0-24, leased earlier") {
		t.Errorf("problems %v", problems)
	}
	holders := MACHolders([]mesh.Peer{older})
	if deltaStandsAlone(nil, []mesh.Peer{newer}, holders) {
		t.Error("a delta bringing a duplicate MAC was applied on its own")
	}
	if !deltaStandsAlone([]mesh.Peer{older}, []mesh.Peer{older}, holders) {
		t.Error("a delta moving the only holder of a MAC needed a whole apply")
	}
	if deltaStandsAlone([]mesh.Peer{older}, nil, MACHolders([]mesh.Peer{older, newer})) {
		t.Error("a delta removing one of two holders was applied on its own")
	}
}

// TestUnusableVtepMAC: a multicast or all-zero VTEP MAC never reaches the
// FDB.
func TestUnusableVtepMAC(t *testing.T) {
	d := mesh.Desired{Peers: []mesh.Peer{
		vxPeer("10.5.2.0/24", "192.168.77.2", `{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}`),
		vxPeer("10.5.3.0/24", "192.168.77.3", `{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}`),
		vxPeer("10.5.4.0/24", "192.168.77.4", `{"VNI":1,"VtepMAC":"02:00:00:00:00:04"}`),
	}}
	state, problems := Plan(d, Options{VNI: 1}, testExt)
	if len(state.FDB()) != 1 || len(problems) != 2 || !strings.Contains(problems[0].Error(), "not a unicast MAC") {
		t.Errorf("FDB %+v, problems %v", state.FDB(), problems)
	}
}
