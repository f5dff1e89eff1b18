package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun/tuntest"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// fuzzNetwork is a dual-stack wireguard network with outside peers, one
// device for both families and every peer reached at its IPv6 address:
// the shape in which a lease's PublicIPv6 and an outside peer's Endpoint
// both reach wireguard-go's configuration text.
const fuzzNetwork = `{"Network":"10.5.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00:5::/48",
	"PeersNetwork":"10.6.0.0/24","Backend":{"Type":"wireguard","Mode":"ipv6"}}`

// Lease keys the fuzzer's values are stored under, and this host's own.
const (
	fuzzKeyA    = "10.5.7.0-24&fc00:5:0:7::-64"
	fuzzKeyB    = "10.5.8.0-24&fc00:5:0:8::-64"
	fuzzSelfKey = "10.5.1.0-24&fc00:5:0:1::-64"
)

// fuzzKey is a fixed public key for seeds (any 32 bytes are a key).
func fuzzKey(b byte) string { return keys.Key{0: b, 31: 7}.String() }

// uapiDevice is a wireguard-go device on wireguard-go's own test TUN and
// bind, serving its UAPI socket under /var/run/wireguard so wgctrl finds
// it, as it finds weft's userspace device.
type uapiDevice struct {
	name     string
	dev      *device.Device
	private  keys.Key
	client   *wgctrl.Client
	listener net.Listener
}

// fuzzDevices numbers the devices of this test binary, for unique names.
var fuzzDevices atomic.Int64

// newUAPIDevice starts a device for one fuzz input and removes it, socket
// and all, when the input is done.
func newUAPIDevice(t testing.TB) *uapiDevice {
	u, err := startUAPIDevice(fmt.Sprintf("weftfz%d-%d", os.Getpid(), fuzzDevices.Add(1)))
	if err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("a UAPI socket under /var/run/wireguard needs root: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(u.close)
	return u
}

func startUAPIDevice(name string) (*uapiDevice, error) {
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), bindtest.NewChannelBinds()[0], device.NewLogger(device.LogLevelSilent, ""))
	private, err := keys.Generate()
	if err != nil {
		return nil, err
	}
	if err := dev.IpcSet(fmt.Sprintf("private_key=%x\nlisten_port=0\n", private[:])); err != nil {
		return nil, err
	}
	file, err := ipc.UAPIOpen(name)
	if err != nil {
		return nil, err
	}
	listener, err := ipc.UAPIListen(name, file)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := listener.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	client, err := wgctrl.New()
	if err != nil {
		listener.Close()
		os.Remove(socketPath(name))
		return nil, err
	}
	return &uapiDevice{name: name, dev: dev, private: private, client: client, listener: listener}, nil
}

// socketPath is where ipc.UAPIOpen puts a device's socket (wireguard-go's
// socket directory, which wgctrl searches).
func socketPath(name string) string { return "/var/run/wireguard/" + name + ".sock" }

// close stops the device and removes its socket (the listener, made from
// a file, does not unlink it).
func (u *uapiDevice) close() {
	u.client.Close()
	u.listener.Close()
	u.dev.Close()
	os.Remove(socketPath(u.name))
}

// state is the device's private key and its peers' allowed IPs, by key,
// as wgctrl reads them from the UAPI socket.
func (u *uapiDevice) state(t testing.TB) (keys.Key, map[keys.Key][]netip.Prefix) {
	d, err := u.client.Device(u.name)
	if err != nil {
		t.Fatalf("reading device %s: %v", u.name, err)
	}
	peers := map[keys.Key][]netip.Prefix{}
	for _, p := range d.Peers {
		var allowed []netip.Prefix
		for _, n := range p.AllowedIPs {
			pfx, _ := netip.ParsePrefix(n.String())
			allowed = append(allowed, pfx)
		}
		peers[keys.Key(p.PublicKey)] = sortedPrefixes(allowed)
	}
	return keys.Key(d.PrivateKey), peers
}

// FuzzWireGuardConfig runs lease and outside-peer values from etcd through
// decode, Compute and Plan into both configuration texts a wireguard-go
// device receives (weft's in-process peer add and wgctrl's, over the
// device's UAPI socket) and checks the device ends with exactly the planned
// peers, each holding only its own lease's subnets, and its own private key:
// no value can add a line of configuration. zone is put on every decoded
// PublicIPv6 and Endpoint (an outside peer's, a sighting's), as if a
// decoder had let one through. Sightings (WeftSeen) are discovered as
// Apply discovers them, so a peer may be sent to one.
func FuzzWireGuardConfig(f *testing.F) {
	good := func(ip6 string, key byte) []byte {
		return fmt.Appendf(nil, `{"PublicIP":"192.168.50.%d","PublicIPv6":%q,"BackendType":"wireguard","BackendData":{"PublicKey":%q,"Port":51820}}`,
			key, ip6, fuzzKey(key))
	}
	// The attack of issue 30, item 2: a zone carrying a second peer and
	// another host's subnet.
	injected := "2001:db8::9%a]:1\nallowed_ip=10.5.8.0/24\nallowed_ip=0.0.0.0/0\npublic_key=" + fmt.Sprintf("%x", keys.Key{0: 9, 31: 7}) + "\nendpoint=[2001:db8::2%b"
	// A value that puts a blank line at wireguard-go's 4,096-byte read
	// boundary, starting a second set that replaces the private key.
	long := "2001:db8::9%" + strings.Repeat("x", 4000) + "\n\nset=1\nprivate_key=" + fmt.Sprintf("%x", keys.Key{1: 1}) + "\nreplace_peers=true\n"
	peer := func(endpoint string, keepalive int) []byte {
		return fmt.Appendf(nil, `{"PublicKey":%q,"Address":"10.6.0.2/32","Endpoint":%q,"Keepalive":%d}`, fuzzKey(20), endpoint, keepalive)
	}
	f.Add(good("2001:db8::7", 7), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "")
	f.Add(good(injected, 7), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "")
	f.Add(good(long, 7), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "")
	f.Add(good("2001:db8::7", 7), good("2001:db8::8", 8), peer("[2001:db8::20%a]:1\nallowed_ip=0.0.0.0/0\n]:51820", 70000), "")
	f.Add(good("2001:db8::7", 7), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "a\nallowed_ip=0.0.0.0/0")
	f.Add(good("::ffff:10.5.8.1", 7), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", -5), "")
	// Sightings (WeftSeen) that send a peer elsewhere: a plain one, one
	// whose zone carries a line of configuration, and a zone put on by
	// the fuzzer.
	seen := func(ip6 string, key byte, endpoint string) []byte {
		v := good(ip6, key)
		return fmt.Appendf(v[:len(v)-1], `,"WeftSeen":[{"Lease":%q,"Endpoint":%q}]}`, fuzzKeyB, endpoint)
	}
	f.Add(seen("2001:db8::7", 7, "[2001:db8::88]:4000"), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "")
	f.Add(seen("2001:db8::7", 7, "[2001:db8::88%a]:1\nallowed_ip=0.0.0.0/0\nendpoint=[2001:db8::2]:1"), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "")
	f.Add(seen("2001:db8::7", 7, "[2001:db8::88]:4000"), good("2001:db8::8", 8), peer("[2001:db8::20]:51820", 25), "b\nallowed_ip=0.0.0.0/0")
	f.Fuzz(func(t *testing.T, valueA, valueB, peerValue []byte, zone string) {
		u := newUAPIDevice(t)
		cfg, err := lease.ParseConfig([]byte(fuzzNetwork))
		if err != nil {
			t.Fatal(err)
		}
		opts, err := ParseOptions(cfg.Backend.Raw)
		if err != nil {
			t.Fatal(err)
		}
		self, err := lease.DecodeLease(fuzzSelfKey, good("2001:db8::1", 1))
		if err != nil {
			t.Fatal(err)
		}
		// What each lease and record may hold: its own subnets.
		entitled := map[string][]netip.Prefix{}
		var leases []lease.Lease
		for i, v := range [][]byte{valueA, valueB} {
			l, err := lease.DecodeLease([]string{fuzzKeyA, fuzzKeyB}[i], v)
			if err != nil {
				continue
			}
			if l.Attrs.PublicIPv6 != nil && zone != "" {
				ip := l.Attrs.PublicIPv6.WithZone(zone)
				l.Attrs.PublicIPv6 = &ip
			}
			for j, s := range l.Attrs.Seen() {
				if zone != "" {
					l.Attrs.Seen()[j].Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().WithZone(zone), s.Endpoint.Port())
				}
			}
			l.Revision, l.CreateRevision = int64(i+2), int64(i+2)
			leases = append(leases, l)
			entitled[l.Key()] = []netip.Prefix{l.Subnet, l.IPv6Subnet}
		}
		d := mesh.Compute(self, leases, cfg)
		if p, err := lease.DecodeOutsidePeer("laptop", peerValue); err == nil {
			if p.Endpoint.IsValid() && zone != "" {
				p.Endpoint = netip.AddrPortFrom(p.Endpoint.Addr().WithZone(zone), p.Endpoint.Port())
			}
			d.Outside = []lease.OutsidePeer{p}
			entitled["peers/laptop"] = []netip.Prefix{p.Address}
		}
		selfKey := keys.Key{0: 1, 31: 7}
		want, _, _ := plan(d, selfKey, opts, discover(d, nil))
		for _, spec := range want {
			for _, p := range spec.AllowedIPs {
				if !slices.Contains(entitled[spec.Lease], p) {
					t.Fatalf("plan gives %s allowed IP %s, outside its own %v", spec.Lease, p, entitled[spec.Lease])
				}
			}
		}
		check := func(path string) {
			t.Helper()
			private, peers := u.state(t)
			if private != u.private {
				t.Fatalf("%s: the device's private key was replaced", path)
			}
			if len(peers) != len(want) {
				t.Fatalf("%s: the device has %d peers, the plan %d: %v", path, len(peers), len(want), peers)
			}
			for _, spec := range want {
				if got := peers[spec.PublicKey]; !slices.Equal(got, sortedPrefixes(spec.AllowedIPs)) {
					t.Fatalf("%s: peer %s has allowed IPs %v, want %v", path, spec.Lease, got, spec.AllowedIPs)
				}
			}
		}
		// weft's own text, as the on-demand mode adds a peer.
		u.dev.RemoveAllPeers()
		inProcess := &wgDevice{dev: u.dev}
		for _, spec := range want {
			if err := inProcess.addPeer(spec, false); err != nil {
				t.Fatalf("in-process add of %s: %v", spec.Lease, err)
			}
		}
		check("in-process")
		// wgctrl's text, as Apply configures the device.
		u.dev.RemoveAllPeers()
		var configs []wgtypes.PeerConfig
		for _, c := range PeerChanges(nil, want) {
			configs = append(configs, toPeerConfig(c))
		}
		if err := u.client.ConfigureDevice(u.name, wgtypes.Config{Peers: configs}); err != nil {
			t.Fatalf("wgctrl configure: %v", err)
		}
		check("wgctrl")
	})
}
