package backends

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/backends/extension"
	"github.com/weftnet/weft/backends/hostgw"
	"github.com/weftnet/weft/backends/ipip"
	"github.com/weftnet/weft/backends/udp"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/backends/vxlan"
	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/leasetest"
	"github.com/weftnet/weft/mesh"
)

// flannelUnderlay is the link flanneld ran on when shared/flannel was
// captured: 192.168.77.0/24, MTU 1500.
var flannelUnderlay = underlay.ExternalInterface{Name: "eth0", Index: 2, MTU: 1500,
	Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")}}

// readCapture reads what flanneld wrote for backend and decodes its config
// and leases; every lease must decode.
func readCapture(t *testing.T, backend string) (*lease.Config, []lease.Lease, leasetest.FlannelCapture) {
	t.Helper()
	capture, err := leasetest.ReadFlannelCapture(backend)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(capture.Config)
	if err != nil {
		t.Fatalf("flannel's config %s: %v", capture.Config, err)
	}
	var leases []lease.Lease
	for _, rec := range capture.Leases {
		l, err := lease.DecodeLease(rec.Key, rec.Value)
		if err != nil {
			t.Fatalf("flannel's lease %s = %s: %v", rec.Key, rec.Value, err)
		}
		l.Revision = rec.Revision
		leases = append(leases, l)
	}
	return cfg, leases, capture
}

// planPeers runs backend's own plan over d and returns how many peers it
// would program, failing on any problem it reports.
func planPeers(t *testing.T, backend string, cfg *lease.Config, d mesh.Desired) int {
	t.Helper()
	var problems []error
	var n int
	switch backend {
	case Alloc:
		n = len(d.Peers) // nothing to program: routing is someone else's
	case Extension:
		var want map[string]extension.Subnet
		want, problems = extension.Wanted(d)
		n = len(want)
		for _, s := range want {
			if s.Data != `{"Token":"abc"}` {
				t.Errorf("extension peer %s gets %q on stdin, want flannel's PreStartupCommand output", s.Key, s.Data)
			}
		}
	case UDP:
		opts, err := udp.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			t.Fatal(err)
		}
		n = udp.NewTable(d, cfg.SubnetLen, opts.Port).Len()
	case VXLAN:
		opts, err := vxlan.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			t.Fatal(err)
		}
		var s vxlan.State
		s, problems = vxlan.Plan(d, opts, flannelUnderlay)
		n = len(s.FDB())
		for i, fdb := range s.FDB() {
			var data vxlan.BackendData
			json.Unmarshal(d.Peers[i].BackendData, &data)
			if fdb.MAC.String() != data.VtepMAC || fdb.Dst != d.Peers[i].PublicIP {
				t.Errorf("vxlan FDB %+v, want flannel's VtepMAC %s to %s", fdb, data.VtepMAC, d.Peers[i].PublicIP)
			}
		}
	case IPIP:
		opts, err := ipip.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			t.Fatal(err)
		}
		routes := ipip.Plan(d, opts, flannelUnderlay)
		n = len(routes)
		for i, r := range routes {
			if r.Dst != d.Peers[i].Subnet || r.Via != d.Peers[i].PublicIP || r.Direct {
				t.Errorf("ipip route %+v, want %s via %s through the tunnel", r, d.Peers[i].Subnet, d.Peers[i].PublicIP)
			}
		}
	case HostGW:
		var routes []underlay.Route
		routes, problems = hostgw.Plan(d, flannelUnderlay)
		n = len(routes)
	case WireGuard:
		opts, err := wireguard.ParseOptions(cfg.Backend.Raw)
		if err != nil {
			t.Fatal(err)
		}
		self, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		var specs []wireguard.PeerSpec
		specs, problems = wireguard.Plan(d, self, opts)
		n = len(specs)
		for i, s := range specs {
			var data wireguard.BackendData
			json.Unmarshal(d.Peers[i].BackendData, &data)
			if s.PublicKey.String() != data.PublicKey || s.Endpoint != netip.AddrPortFrom(d.Peers[i].PublicIP, uint16(data.Port)) {
				t.Errorf("wireguard peer %s at %s, want flannel's key %s at %s:%d", s.PublicKey, s.Endpoint, data.PublicKey, d.Peers[i].PublicIP, data.Port)
			}
		}
	default:
		t.Fatalf("no plan for %s", backend)
	}
	if err := errors.Join(problems...); err != nil {
		t.Errorf("%s plan refuses flannel's leases: %v", backend, err)
	}
	return n
}

// TestFlannelLeasesArePeers reads every lease flanneld v0.28.9 wrote
// (shared/flannel) and checks that, seen from each host in turn, every
// other flannel host is a valid peer of its backend: mesh.Compute keeps
// it with the PublicIP, subnet and BackendData flannel wrote, and the
// backend's own plan programs it.
func TestFlannelLeasesArePeers(t *testing.T) {
	for _, kind := range Kinds {
		backend := kind.Name
		t.Run(backend, func(t *testing.T) {
			cfg, leases, _ := readCapture(t, backend)
			for _, self := range leases {
				d := mesh.Compute(self, leases, cfg)
				if len(d.Skipped) != 0 {
					t.Errorf("seen from %s, weft skips flannel's leases: %+v", self.Key(), d.Skipped)
				}
				if len(d.Peers) != len(leases)-1 {
					t.Fatalf("seen from %s: %d peers, want %d", self.Key(), len(d.Peers), len(leases)-1)
				}
				for _, p := range d.Peers {
					var want lease.Lease
					for _, l := range leases {
						if l.Subnet == p.Subnet {
							want = l
						}
					}
					if p.PublicIP != want.Attrs.PublicIP || !bytes.Equal(p.BackendData, want.Attrs.BackendData) {
						t.Errorf("peer %s: PublicIP %s BackendData %s, flannel wrote %s %s",
							p.Key, p.PublicIP, p.BackendData, want.Attrs.PublicIP, want.Attrs.BackendData)
					}
				}
				if n := planPeers(t, backend, cfg, d); n != len(leases)-1 {
					t.Errorf("seen from %s, the %s plan programs %d peers, want %d", self.Key(), backend, n, len(leases)-1)
				}
			}
		})
	}
}

// TestFlannelUDPLeaseSkippedByOtherBackends: a lease with no BackendType is
// a udp host's; flannel's vxlan, host-gw and wireguard backends ignore it,
// and so does weft, saying why.
func TestFlannelUDPLeaseSkippedByOtherBackends(t *testing.T) {
	_, udpLeases, _ := readCapture(t, UDP)
	for _, backend := range []string{VXLAN, HostGW, WireGuard} {
		cfg, leases, _ := readCapture(t, backend)
		self := leases[0]
		other := udpLeases[0]
		other.Attrs.PublicIP = netip.MustParseAddr("192.168.77.99")
		d := mesh.Compute(self, append(leases[1:], other), cfg)
		if len(d.Skipped) != 1 || d.Skipped[0].Key != other.Key() {
			t.Fatalf("%s: skipped %+v, want only %s", backend, d.Skipped, other.Key())
		}
		if want := `has no BackendType (a udp host's lease, as flannel writes it), this network uses "` + backend + `"`; d.Skipped[0].Reason != want {
			t.Errorf("%s: reason %q, want %q", backend, d.Skipped[0].Reason, want)
		}
	}
}

// weftBackendData is what weft's backend publishes for the host that wrote
// flannel's lease: the same VTEP MAC or key, encoded by weft.
func weftBackendData(t *testing.T, backend string, flannels json.RawMessage) json.RawMessage {
	t.Helper()
	switch backend {
	case VXLAN:
		var data vxlan.BackendData
		if err := json.Unmarshal(flannels, &data); err != nil {
			t.Fatal(err)
		}
		mac, err := net.ParseMAC(data.VtepMAC)
		if err != nil {
			t.Fatal(err)
		}
		return vxlan.EncodeBackendData(data.VNI, mac)
	case WireGuard:
		var data wireguard.BackendData
		if err := json.Unmarshal(flannels, &data); err != nil {
			t.Fatal(err)
		}
		key, err := keys.ParseKey(data.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return wireguard.EncodeBackendData(key, data.Port)
	case Extension:
		// The capture's own PreStartupCommand, run for real.
		cfg, _, _ := readCapture(t, backend)
		b, err := extension.New(cfg.Backend.Raw, flannelUnderlay, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Setup(context.Background()); err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		return b.BackendData()
	}
	return nil // udp and host-gw publish none
}

// TestWeftLeaseEncodesAsFlannel: weft's own lease for the same backend,
// address and identity is byte for byte what flanneld wrote (field names,
// "PublicIPv6":null, omitted BackendType and BackendData).
func TestWeftLeaseEncodesAsFlannel(t *testing.T) {
	for _, kind := range Kinds {
		backend := kind.Name
		t.Run(backend, func(t *testing.T) {
			cfg, leases, capture := readCapture(t, backend)
			for i, l := range leases {
				ours := lease.Attrs{PublicIP: l.Attrs.PublicIP, BackendType: cfg.Backend.LeaseType(),
					BackendData: weftBackendData(t, backend, l.Attrs.BackendData)}
				if got, want := string(ours.Encode()), string(capture.Leases[i].Value); got != want {
					t.Errorf("weft writes\n %s\nflannel wrote\n %s", got, want)
				}
			}
		})
	}
}

// TestWeftSubnetEnvAsFlannel: for flannel's network, subnet and underlay
// MTU, weft's backend picks the same MTU and the subnet file is flannel's
// byte for byte.
func TestWeftSubnetEnvAsFlannel(t *testing.T) {
	for _, kind := range Kinds {
		backend := kind.Name
		want, err := leasetest.ReadFlannelSubnetEnv(backend)
		if errors.Is(err, fs.ErrNotExist) {
			continue // flannel wrote none for this backend in the capture
		}
		t.Run(backend, func(t *testing.T) {
			if err != nil {
				t.Fatal(err)
			}
			cfg, _, _ := readCapture(t, backend)
			env, err := lease.ParseSubnetEnv(want)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Constructors()[backend](Env{Config: cfg, External: flannelUnderlay,
				Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PublicIP: netip.MustParseAddr("192.168.77.11"),
				KeyFile: filepath.Join(t.TempDir(), "wg.key")})
			if err != nil {
				t.Fatal(err)
			}
			ours := lease.SubnetEnv{Network: cfg.Network, Subnet: env.Subnet, MTU: b.MTU(), IPMasq: false}
			if got := ours.Encode(); !bytes.Equal(got, want) {
				t.Errorf("weft writes\n%s\nflannel wrote\n%s", got, want)
			}
		})
	}
}

// TestBackendMTUAsFlannel: Backend.MTU is the MTU on the wire, as in
// flannel, so "MTU":1450 gives every host of a mixed cluster the same
// device MTU and FLANNEL_MTU.
func TestBackendMTUAsFlannel(t *testing.T) {
	for _, tt := range []struct {
		backend string
		mtu     string
		want    int
	}{
		{VXLAN, `,"MTU":1450`, 1400},
		{VXLAN, ``, 1450},
		{WireGuard, `,"MTU":1450`, 1370},
		{WireGuard, ``, 1420},
		{UDP, `,"MTU":1450`, 1422},
		{HostGW, ``, 1500},
	} {
		cfg, err := ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"` + tt.backend + `"` + tt.mtu + `}}`))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Constructors()[tt.backend](Env{Config: cfg, External: flannelUnderlay,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PublicIP: netip.MustParseAddr("192.168.77.11"),
			KeyFile: filepath.Join(t.TempDir(), "wg.key")})
		if err != nil {
			t.Fatal(err)
		}
		if b.MTU() != tt.want {
			t.Errorf("%s%s: MTU %d, flannel's is %d", tt.backend, tt.mtu, b.MTU(), tt.want)
		}
	}
}
