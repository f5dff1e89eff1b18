package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/keys"
)

func TestSubnetKey(t *testing.T) {
	p := netip.MustParsePrefix("10.5.34.0/24")
	if got := SubnetKey(p); got != "10.5.34.0-24" {
		t.Fatalf("SubnetKey = %q", got)
	}
	back, err := ParseSubnetKey("10.5.34.0-24")
	if err != nil || back != p {
		t.Fatalf("ParseSubnetKey = %v, %v", back, err)
	}
	for _, bad := range []string{"10.5.34.0/24", "10.5.34.7-24", "10.5.34.0-33", "x-24", "10.5.34.0-", "fd00::-64", ""} {
		if _, err := ParseSubnetKey(bad); !errors.Is(err, ErrBadLease) {
			t.Errorf("ParseSubnetKey(%q) = %v, want ErrBadLease", bad, err)
		}
	}
}

func TestAttrsEncodeAsFlannel(t *testing.T) {
	tests := []struct {
		attrs Attrs
		want  string
	}{
		{Attrs{PublicIP: netip.MustParseAddr("192.168.50.102"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`)},
			`{"PublicIP":"192.168.50.102","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`},
		{Attrs{PublicIP: netip.MustParseAddr("192.168.50.3"), BackendType: "host-gw"},
			`{"PublicIP":"192.168.50.3","PublicIPv6":null,"BackendType":"host-gw"}`},
		// A dual-stack wireguard host, field for field as flannel's
		// newSubnetAttrs writes it (BackendV6Data carries the IPv6 port).
		{Attrs{PublicIP: netip.MustParseAddr("192.168.50.4"), PublicIPv6: ptr(netip.MustParseAddr("fd00:50::4")), BackendType: "wireguard",
			BackendData: json.RawMessage(`{"PublicKey":"V/Tff9mTqs7y49FSXReDz46kPIvJC4BUS16h60XOFTQ=","Port":51820}`)}.WithBackendV6Data(json.RawMessage(`{"PublicKey":"V/Tff9mTqs7y49FSXReDz46kPIvJC4BUS16h60XOFTQ=","Port":51821}`)),
			`{"PublicIP":"192.168.50.4","PublicIPv6":"fd00:50::4","BackendType":"wireguard","BackendData":{"PublicKey":"V/Tff9mTqs7y49FSXReDz46kPIvJC4BUS16h60XOFTQ=","Port":51820},"BackendV6Data":{"PublicKey":"V/Tff9mTqs7y49FSXReDz46kPIvJC4BUS16h60XOFTQ=","Port":51821}}`},
	}
	for _, tt := range tests {
		if got := string(tt.attrs.Encode()); got != tt.want {
			t.Errorf("Encode:\n got %s\nwant %s", got, tt.want)
		}
		l, err := DecodeLease("10.5.34.0-24", []byte(tt.want))
		if err != nil {
			t.Fatal(err)
		}
		if string(l.Attrs.Encode()) != tt.want {
			t.Errorf("round trip changed the value: %s", l.Attrs.Encode())
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestSubnetEnvDualStack: the IPv6 lines sit where flannel's
// WriteSubnetFile puts them (after the IPv4 pair, before the MTU) and read
// back; an IPv4-only file has none.
func TestSubnetEnvDualStack(t *testing.T) {
	env := SubnetEnv{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix("10.5.34.0/24"),
		IPv6Network: netip.MustParsePrefix("fc00:5::/48"), IPv6Subnet: netip.MustParsePrefix("fc00:5:0:22::/64"), MTU: 1450, IPMasq: true}
	want := "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET=fc00:5:0:22::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if got := string(env.Encode()); got != want {
		t.Fatalf("Encode:\n%s\nwant\n%s", got, want)
	}
	back, err := ParseSubnetEnv([]byte(want))
	if err != nil || back != env {
		t.Fatalf("ParseSubnetEnv = %+v %v, want %+v", back, err, env)
	}
	only6 := env
	only6.Network, only6.Subnet = netip.Prefix{}, netip.Prefix{}
	want6 := "FLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET=fc00:5:0:22::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if got := string(only6.Encode()); got != want6 {
		t.Errorf("IPv6-only file:\n%s\nwant\n%s", got, want6)
	}
	if back, err := ParseSubnetEnv([]byte(want6)); err != nil || back != only6 {
		t.Errorf("IPv6-only file read back as %+v %v", back, err)
	}
	env.IPv6Network, env.IPv6Subnet = netip.Prefix{}, netip.Prefix{}
	if got := string(env.Encode()); strings.Contains(got, "IPV6") {
		t.Errorf("IPv4-only file has IPv6 lines: %s", got)
	}
	if _, err := ParseSubnetEnv([]byte(strings.Replace(want, "fc00:5:0:22::1/64", "10.6.0.1/24", 1))); err == nil || !strings.Contains(err.Error(), "FLANNEL_IPV6_SUBNET") {
		t.Errorf("an IPv4 prefix as FLANNEL_IPV6_SUBNET: %v", err)
	}
}

func TestDecodeLeaseRejects(t *testing.T) {
	tests := []struct{ name, key, value, want string }{
		{"invalid json", "10.5.1.0-24", `{"PublicIP":`, "lease 10.5.1.0-24"},
		{"wrong type", "10.5.1.0-24", `{"PublicIP":7}`, "lease 10.5.1.0-24"},
		{"not an ip", "10.5.1.0-24", `{"PublicIP":"host-a"}`, `PublicIP "host-a" is not an IPv4 address`},
		{"bad v6", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","PublicIPv6":"1.2.3.4"}`, "PublicIPv6"},
		// Issue 30, items 2 and 7: a zone (which would reach wireguard-go's
		// text protocol) and IPv4-mapped forms are refused where decoded.
		{"v6 zone", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","PublicIPv6":"2001:db8::9%a]:1\nallowed_ip=0.0.0.0/0"}`, `carries a zone "a]:1\nallowed_ip=0.0.0.0/0"`},
		{"v6 plain zone", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","PublicIPv6":"fe80::1%eth0"}`, "carries a zone"},
		{"v4-mapped unspecified", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","PublicIPv6":"::ffff:0.0.0.0"}`, "IPv4-mapped"},
		{"v4-mapped inside", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","PublicIPv6":"::ffff:10.5.9.1"}`, "IPv4-mapped"},
		{"bad key", "10.5.1.9-24", `{"PublicIP":"1.2.3.4"}`, "not a subnet's network address"},
		{"also its own type", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","BackendType":"vxlan","WeftAlso":[{"BackendType":"vxlan"}]}`, "WeftAlso"},
		{"also no type", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","BackendType":"vxlan","WeftAlso":[{"BackendData":{}}]}`, "WeftAlso"},
		{"also a hostile type", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","BackendType":"vxlan","WeftAlso":[{"BackendType":"wire\nguard"}]}`, "not a backend name"},
		{"also too many", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","WeftAlso":[{"BackendType":"a"},{"BackendType":"b"},{"BackendType":"c"},{"BackendType":"d"},{"BackendType":"e"}]}`, "more than the 4"},
		{"huge", "10.5.1.0-24", `{"PublicIP":"1.2.3.4","X":"` + strings.Repeat("a", 1<<20) + `"}`, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeLease(tt.key, []byte(tt.value))
			if !errors.Is(err, ErrBadLease) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("DecodeLease = %v, want ErrBadLease containing %q", err, tt.want)
			}
		})
	}
}

func FuzzDecodeLease(f *testing.F) {
	f.Add("10.5.34.0-24", []byte(`{"PublicIP":"192.168.50.102","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}`))
	f.Add("10.5.0.0-16", []byte(`{"PublicIP":"1.1.1.1","BackendData":null}`))
	f.Add("1-2", []byte(`[]`))
	f.Add("10.5.34.0-24", []byte(`{"PublicIP":"192.168.50.102","PublicIPv6":null,"WeftHostID":"0102030405060708090a0b0c0d0e0f10"}`))
	f.Add("10.5.34.0-24", []byte(`{"PublicIP":"192.168.50.102","PublicIPv6":null,"WeftSeen":[{"Lease":"10.5.3.0-24","Endpoint":"192.0.2.1:51820"}]}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := DecodeLease(key, value)
		if err != nil {
			if !errors.Is(err, ErrBadLease) {
				t.Fatalf("error %v does not wrap ErrBadLease", err)
			}
			return
		}
		if !l.Subnet.IsValid() || !l.Attrs.PublicIP.Is4() || SubnetKey(l.Subnet) != key {
			t.Fatalf("decoded an invalid lease %+v from %q", l, key)
		}
	})
}

// TestBackendOfALease: a lease with no BackendType is a udp host's (as
// flannel's udp backend writes it), and weft's own udp lease, like an
// untyped backend's, has none.
func TestBackendOfALease(t *testing.T) {
	if got := (Attrs{}).Backend(); got != DefaultBackend {
		t.Errorf("no BackendType reads as %q, want udp", got)
	}
	if got := (Attrs{BackendType: "vxlan"}).Backend(); got != "vxlan" {
		t.Errorf("vxlan reads as %q", got)
	}
	for _, tt := range []struct {
		backend BackendConfig
		want    string
	}{
		{BackendConfig{Type: DefaultBackend}, ""},
		{BackendConfig{Type: "alloc", Untyped: true}, ""},
		{BackendConfig{Type: "vxlan"}, "vxlan"},
	} {
		if got := tt.backend.LeaseType(); got != tt.want {
			t.Errorf("LeaseType of %+v = %q, want %q", tt.backend, got, tt.want)
		}
	}
	udp := Attrs{PublicIP: netip.MustParseAddr("192.168.77.11"), BackendType: BackendConfig{Type: DefaultBackend}.LeaseType()}
	if got, want := string(udp.Encode()), `{"PublicIP":"192.168.77.11","PublicIPv6":null}`; got != want {
		t.Errorf("weft's udp lease %s, flannel writes %s", got, want)
	}
}

// TestDualSubnetKey: a dual-stack lease's key round-trips to exactly the
// text flannel writes (MakeSubnetKey), and only that text is read.
func TestDualSubnetKey(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fc00:0:0:1::/64")
	const flannel = "10.244.1.0-24&fc00:0:0:1::-64"
	if got := DualSubnetKey(v4, v6); got != flannel {
		t.Fatalf("DualSubnetKey = %q, want %q", got, flannel)
	}
	if got := DualSubnetKey(v4, netip.Prefix{}); got != "10.244.1.0-24" {
		t.Fatalf("DualSubnetKey without IPv6 = %q", got)
	}
	g4, g6, err := ParseSubnetKeys(flannel)
	if err != nil || g4 != v4 || g6 != v6 {
		t.Fatalf("ParseSubnetKeys = %v %v %v", g4, g6, err)
	}
	if g4, err := ParseSubnetKey(flannel); err != nil || g4 != v4 {
		t.Fatalf("ParseSubnetKey of a dual key = %v %v, want its IPv4 half", g4, err)
	}
	// An IPv6-only lease, as flannel writes it: the empty IPv4 half.
	const only6 = "0.0.0.0-0&fc00:0:0:1::-64"
	if g4, g6, err := ParseSubnetKeys(only6); err != nil || g4.IsValid() || g6 != v6 || DualSubnetKey(g4, g6) != only6 {
		t.Fatalf("ParseSubnetKeys(%q) = %v %v %v", only6, g4, g6, err)
	}
	l, err := DecodeLease(flannel, []byte(`{"PublicIP":"192.168.50.7","PublicIPv6":"fc00:50::7","BackendType":"host-gw","BackendData":null,"BackendV6Data":null}`))
	if err != nil || l.Subnet != v4 || l.IPv6Subnet != v6 || l.Key() != flannel || l.Attrs.PublicIPv6 == nil || l.Attrs.PublicIPv6.String() != "fc00:50::7" {
		t.Fatalf("DecodeLease of flannel's dual-stack lease = %+v %v", l, err)
	}
	for _, bad := range []string{
		"10.244.1.0-24&", "10.244.1.0-24&fc00:0:0:1::", "10.244.1.0-24&fc00:0:0:1::1-64", "10.244.1.0-24&fc00:0000:0:1::-64",
		"10.244.1.0-24&10.5.0.0-16", "fc00:0:0:1::-64&10.244.1.0-24", "10.244.1.0-24&fc00:0:0:1::-129", "10.244.1.0-24&fe80::%eth0-64",
		"10.244.1.0-24&fc00:0:0:1::-64&fc00:0:0:2::-64", "10.244.1.0-24&::ffff:10.0.0.0-120",
		"0.0.0.0-0", "0.0.0.0-0&", "0.0.0.1-0&fc00:0:0:1::-64",
	} {
		if _, _, err := ParseSubnetKeys(bad); !errors.Is(err, ErrBadLease) {
			t.Errorf("ParseSubnetKeys(%q) = %v, want ErrBadLease", bad, err)
		}
	}
}

// TestWeftAlso: a lease during a switch names the other backends its host
// speaks in WeftAlso, after flannel's fields (which flannel reads as
// before); without any, the lease is flannel's byte for byte.
func TestWeftAlso(t *testing.T) {
	a := Attrs{PublicIP: netip.MustParseAddr("192.168.50.2"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}`)}.WithAlso([]PathAttrs{{BackendType: "wireguard", BackendData: json.RawMessage(`{"PublicKey":"k","Port":51820}`)}})
	want := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"},` +
		`"WeftAlso":[{"BackendType":"wireguard","BackendData":{"PublicKey":"k","Port":51820}}]}`
	if got := string(a.Encode()); got != want {
		t.Fatalf("encoded\n %s\nwant\n %s", got, want)
	}
	l, err := DecodeLease("10.5.2.0-24", []byte(want))
	if err != nil || len(l.Attrs.Also()) != 1 || l.Attrs.Also()[0].BackendType != "wireguard" {
		t.Fatalf("decoded %+v, %v", l.Attrs, err)
	}
	if paths := l.Attrs.Paths(); len(paths) != 2 || paths[0].BackendType != "vxlan" || paths[1].BackendType != "wireguard" {
		t.Errorf("paths %+v", paths)
	}
	a = a.WithAlso(nil)
	if got := string(a.Encode()); strings.Contains(got, "WeftAlso") {
		t.Errorf("outside a switch the lease names WeftAlso: %s", got)
	}
}

// TestWeftHostID: a weft lease carries its host's ID after flannel's
// fields (which flannel reads as before, ignoring it); an ID that is not
// 32 lowercase hex digits makes the lease bad.
func TestWeftHostID(t *testing.T) {
	a := Attrs{PublicIP: netip.MustParseAddr("192.168.50.2"), BackendType: "host-gw", HostID: keys.HostID{1, 2, 3}}
	want := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"host-gw","WeftHostID":"01020300000000000000000000000000"}`
	if got := string(a.Encode()); got != want {
		t.Fatalf("encoded\n %s\nwant\n %s", got, want)
	}
	if l, err := DecodeLease("10.5.2.0-24", []byte(want)); err != nil || l.Attrs.HostID != a.HostID {
		t.Fatalf("decoded %+v, %v", l.Attrs, err)
	}
	for _, bad := range []string{`"x"`, `"0102030000000000000000000000000"`, `"01020300000000000000000000000000\n"`, `"00000000000000000000000000000000"`} {
		value := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"WeftHostID":` + bad + `}`
		if _, err := DecodeLease("10.5.2.0-24", []byte(value)); !errors.Is(err, ErrBadLease) {
			t.Errorf("WeftHostID %s decoded: %v", bad, err)
		}
	}
}

// TestWeftSeen: a lease carries what its host sees of peers behind NAT
// after flannel's fields; each sighting is checked where it is decoded (a
// lease key, an endpoint a host can be sent to), and a lease with a bad
// one, too many or one lease named twice is bad.
func TestWeftSeen(t *testing.T) {
	a := Attrs{PublicIP: netip.MustParseAddr("192.168.50.2"), BackendType: "wireguard"}.WithSightings([]Sighting{{Lease: "10.5.3.0-24", Endpoint: netip.MustParseAddrPort("192.168.50.13:51820")}}, nil)
	want := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"wireguard","WeftSeen":[{"Lease":"10.5.3.0-24","Endpoint":"192.168.50.13:51820"}]}`
	if got := string(a.Encode()); got != want {
		t.Fatalf("encoded\n %s\nwant\n %s", got, want)
	}
	if l, err := DecodeLease("10.5.2.0-24", []byte(want)); err != nil || len(l.Attrs.Seen()) != 1 || l.Attrs.Seen()[0] != a.Seen()[0] {
		t.Fatalf("decoded %+v, %v", l.Attrs, err)
	}
	many := make([]string, MaxSightings+1)
	for i := range many {
		many[i] = fmt.Sprintf(`{"Lease":"10.5.%d.0-24","Endpoint":"192.0.2.1:1"}`, i)
	}
	for _, bad := range []string{
		`{"Lease":"10.5.3.0-24","Endpoint":"[fe80::1%eth0]:51820"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"[2001:db8::1%a\nallowed_ip=0.0.0.0/0]:1"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"192.168.50.13:0"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"127.0.0.1:51820"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"[::ffff:192.0.2.1]:51820"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"224.0.0.1:51820"}`,
		`{"Lease":"banana","Endpoint":"192.168.50.13:51820"}`,
		`{"Lease":"10.5.3.0-24","Endpoint":"192.0.2.1:1"},{"Lease":"10.5.3.0-24","Endpoint":"192.0.2.2:1"}`,
		strings.Join(many, ","),
	} {
		value := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"WeftSeen":[` + bad + `]}`
		if _, err := DecodeLease("10.5.2.0-24", []byte(value)); !errors.Is(err, ErrBadLease) {
			t.Errorf("WeftSeen %.80s decoded: %v", bad, err)
		}
	}
}

// TestWeftReach: a lease of a host behind NAT names the peers it reaches
// directly; each must be a lease key, once, at most MaxSightings.
func TestWeftReach(t *testing.T) {
	value := `{"PublicIP":"192.168.50.2","PublicIPv6":null,"WeftReach":["10.5.1.0-24","10.5.3.0-24"]}`
	l, err := DecodeLease("10.5.2.0-24", []byte(value))
	if err != nil || len(l.Attrs.Reach()) != 2 || string(l.Attrs.Encode()) != value {
		t.Fatalf("decoded %+v, %v; encodes as %s", l.Attrs, err, l.Attrs.Encode())
	}
	for _, bad := range []string{`["banana"]`, `["10.5.1.0-24","10.5.1.0-24"]`, `["10.5.1.0-24\nx"]`} {
		if _, err := DecodeLease("10.5.2.0-24", []byte(`{"PublicIP":"192.168.50.2","WeftReach":`+bad+`}`)); !errors.Is(err, ErrBadLease) {
			t.Errorf("WeftReach %s decoded: %v", bad, err)
		}
	}
}
