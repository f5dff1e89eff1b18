package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vishvananda/netlink"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/wireguard/wireguardtest"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// fakeHost is a wireguard backend on the pure tier's fakes: the in-memory
// kernel (links, addresses, routes as `ip` prints them) and the in-memory
// WireGuard control (devices as `wg show` prints them).
type fakeHost struct {
	b       *Backend
	kernel  *netkerneltest.Kernel
	control *wireguardtest.Control
}

func newFakeHost(t *testing.T, options string) *fakeHost {
	t.Helper()
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.50.1/24"), 1500)
	ext.Name = "ext0"
	b, err := New(json.RawMessage(options), ext, filepath.Join(t.TempDir(), "key"), k, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := wireguardtest.New(func(name string) bool { _, err := k.LinkByName(name); return err == nil })
	b.SetControl(c)
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &fakeHost{b: b, kernel: k, control: c}
}

// wgShow is what `wg show weft-wg` prints for a device with this host's
// key on port 51820 holding peers (already in wg's text).
func (h *fakeHost) wgShow(peers ...string) string {
	out := fmt.Sprintf("interface: %s\n  public key: %s\n  private key: (hidden)\n  listening port: 51820\n", DeviceName, h.b.id.key.Public())
	for _, p := range peers {
		out += "\n" + p
	}
	return out
}

// peerText is one peer of `wg show`, as the fake sorts them.
func peerText(k keys.Key, endpoint, allowed string) string {
	return fmt.Sprintf("peer: %s\n  endpoint: %s\n  allowed ips: %s\n", k, endpoint, allowed)
}

// sortedPeers orders peer texts as `wg show` on the fake does (by key).
func sortedPeers(texts map[keys.Key]string) []string {
	ks := make([]string, 0, len(texts))
	byText := map[string]string{}
	for k, t := range texts {
		ks = append(ks, k.String())
		byText[k.String()] = t
	}
	slices.Sort(ks)
	out := make([]string, 0, len(ks))
	for _, k := range ks {
		out = append(out, byText[k])
	}
	return out
}

func self(subnet string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.168.50.1")}}
}

// TestApplyOnFakes: wireguard's whole apply, delta and drift repair on the
// fakes, compared as `wg show` and `ip` would print them: the device gets
// the key, the port and one peer per lease; an apply with nothing to
// change writes nothing; a delta changes only its peers in one write; a
// delta whose write fails asks for a whole apply, which repairs; a device
// deleted by hand is made again and refilled.
func TestApplyOnFakes(t *testing.T) {
	h := newFakeHost(t, `{"Type":"wireguard","Implementation":"kernel"}`)
	ctx := context.Background()
	ka, kb, kc := mustKey(t), mustKey(t), mustKey(t)
	a := wgPeer("10.5.2.0/24", "192.168.50.2", data(ka, 51820))
	b := wgPeer("10.5.3.0/24", "192.168.50.3", data(kb, 51820))
	c := wgPeer("10.5.4.0/24", "192.168.50.4", data(kc, 51821))
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self("10.5.1.0/24"), Peers: []mesh.Peer{a, b}}
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	texts := map[keys.Key]string{
		ka: peerText(ka, "192.168.50.2:51820", "10.5.2.0/24"),
		kb: peerText(kb, "192.168.50.3:51820", "10.5.3.0/24"),
	}
	check := func(when string) {
		t.Helper()
		if got, want := h.control.Show(DeviceName), h.wgShow(sortedPeers(texts)...); got != want {
			t.Fatalf("%s, wg show:\n%s\nwant:\n%s", when, got, want)
		}
	}
	check("after the first apply")
	kernel := h.kernel.State()
	for _, line := range []string{
		"link weft-wg wireguard mtu 1420 up",
		"addr 10.5.1.0/32 dev weft-wg",
		"route 10.5.0.0/16 dev weft-wg",
	} {
		if !strings.Contains(kernel, line) {
			t.Errorf("the kernel lacks %q:\n%s", line, kernel)
		}
	}

	writes := h.control.Calls(wireguardtest.OpConfigure)
	if err := h.b.Apply(ctx, d); err != nil || h.control.Calls(wireguardtest.OpConfigure) != writes {
		t.Fatalf("an apply with nothing to change: %v, %d writes", err, h.control.Calls(wireguardtest.OpConfigure)-writes)
	}

	// b leaves, c comes: one write, no read.
	reads, writes := h.control.Calls(wireguardtest.OpDevice), h.control.Calls(wireguardtest.OpConfigure)
	if err := h.b.ApplyDelta(ctx, mesh.Delta{Old: []mesh.Peer{b}, New: []mesh.Peer{c}}); err != nil {
		t.Fatal(err)
	}
	delete(texts, kb)
	texts[kc] = peerText(kc, "192.168.50.4:51821", "10.5.4.0/24")
	check("after a delta")
	if r, w := h.control.Calls(wireguardtest.OpDevice)-reads, h.control.Calls(wireguardtest.OpConfigure)-writes; r != 0 || w < 1 {
		t.Errorf("the delta read the device %d times and wrote %d; want no read", r, w)
	}

	// A write that fails: the delta asks for a whole apply, which repairs.
	h.control.Fail(wireguardtest.OpConfigure, errors.New("injected"))
	moved := wgPeer("10.5.4.0/24", "192.168.50.44", data(kc, 51821))
	if err := h.b.ApplyDelta(ctx, mesh.Delta{Old: []mesh.Peer{c}, New: []mesh.Peer{moved}}); !errors.Is(err, mesh.ErrWholeApply) {
		t.Fatalf("a failed delta returned %v, want ErrWholeApply", err)
	}
	h.control.Fail(wireguardtest.OpConfigure, nil)
	d.Peers = []mesh.Peer{a, moved}
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	texts[kc] = peerText(kc, "192.168.50.44:51821", "10.5.4.0/24")
	check("after the whole apply that follows a failed delta")

	// Deleted by hand: the next apply makes the device again and fills it.
	if err := h.kernel.LinkDel(mustLink(t, h.kernel, DeviceName)); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	check("after the device was deleted by hand")
}

// TestOutsidePeersOnFakes: outside peers (PeersNetwork) are configured
// eagerly with their address alone and no endpoint, the PeersNetwork is
// routed into the device without an address, and a peer removed from the
// store leaves the device.
func TestOutsidePeersOnFakes(t *testing.T) {
	h := newFakeHost(t, `{"Type":"wireguard","Implementation":"kernel"}`)
	ctx := context.Background()
	laptop := mustKey(t)
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self("10.5.1.0/24"),
		PeersNetwork: netip.MustParsePrefix("10.6.0.0/24"),
		Outside:      []lease.OutsidePeer{{Name: "laptop", PublicKey: laptop.String(), Address: netip.MustParsePrefix("10.6.0.7/32"), Keepalive: 25}}}
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	want := h.wgShow(fmt.Sprintf("peer: %s\n  allowed ips: 10.6.0.7/32\n  persistent keepalive: every 25 seconds\n", laptop))
	if got := h.control.Show(DeviceName); got != want {
		t.Fatalf("wg show:\n%s\nwant:\n%s", got, want)
	}
	if !strings.Contains(h.kernel.State(), "route 10.6.0.0/24 dev weft-wg") {
		t.Errorf("PeersNetwork is not routed into the device:\n%s", h.kernel.State())
	}
	d.Outside = nil
	if err := h.b.Apply(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := h.control.Show(DeviceName); got != h.wgShow() {
		t.Errorf("the removed outside peer stays:\n%s", got)
	}
}

// TestOnDemandOnFakes: with on-demand peers, a whole apply leaves the
// device empty (peers wait in the table), a packet to a peer's subnet
// configures that peer alone, a peer whose traffic stopped is removed by
// the idle sweep, and one configured by an inbound packet whose handshake
// never comes is removed when its probation ends.
func TestOnDemandOnFakes(t *testing.T) {
	startUserspaceDevice = func(name string, _ deviceMTU, peers *onDemand, _ *slog.Logger) (*wgDevice, error) {
		peers.start()
		return &wgDevice{name: name, kind: ImplUserspace, peers: peers}, nil
	}
	t.Cleanup(func() { startUserspaceDevice = startUserspace })
	k := netkerneltest.NewKernel()
	k.AddTUN(DeviceName, 1420) // wireguard-go's persistent TUN
	ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.50.1/24"), 1500)
	ext.Name = "ext0"
	b, err := New(json.RawMessage(`{"Type":"wireguard","Implementation":"userspace","OnDemandPeers":"on","OnDemandIdleAfter":60}`),
		ext, filepath.Join(t.TempDir(), "key"), k, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	control := wireguardtest.New(func(name string) bool { _, err := k.LinkByName(name); return err == nil })
	b.SetControl(control)
	if err := b.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h := &fakeHost{b: b, kernel: k, control: control}
	// wireguard-go's in-process activation, through the fake control.
	b.peers.setConfigure(func(spec PeerSpec, _ bool) error {
		return control.ConfigureDevice(DeviceName, wgtypes.Config{Peers: []wgtypes.PeerConfig{toPeerConfig(Change{PublicKey: spec.PublicKey, Spec: spec})}})
	})
	ka, kb := mustKey(t), mustKey(t)
	d := mesh.Desired{Network: netip.MustParsePrefix("10.5.0.0/16"), Self: self("10.5.1.0/24"), Peers: []mesh.Peer{
		wgPeer("10.5.2.0/24", "192.168.50.2", data(ka, 51820)), wgPeer("10.5.3.0/24", "192.168.50.3", data(kb, 51820))}}
	if err := b.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if got := control.Show(DeviceName); got != h.wgShow() {
		t.Fatalf("on demand, the whole apply configured peers:\n%s", got)
	}
	b.peers.outbound(ipv4Packet("10.5.3.9"))
	waitFor(t, "the outbound activation", func() bool {
		return control.Show(DeviceName) == h.wgShow(peerText(kb, "192.168.50.3:51820", "10.5.3.0/24"))
	})

	// kb handshook and carried traffic; then nothing moves for the idle time.
	now := time.Now()
	control.SetHandshake(DeviceName, wgtypes.Key(kb), now, 100, 100)
	seen := map[keys.Key]activity{}
	b.removeIdle(seen, now)
	if got := control.Show(DeviceName); !strings.Contains(got, kb.String()) {
		t.Fatalf("a peer in use was removed:\n%s", got)
	}
	b.removeIdle(seen, now.Add(61*time.Second))
	if got := control.Show(DeviceName); got != h.wgShow() {
		t.Fatalf("the idle peer stays:\n%s", got)
	}

	// A datagram from ka's endpoint configures it on probation; no
	// handshake comes, and it leaves when probation ends.
	b.peers.inbound([]byte{messageTransport, 0, 0, 0}, netip.MustParseAddrPort("192.168.50.2:51820"))
	waitFor(t, "the inbound activation", func() bool { return strings.Contains(control.Show(DeviceName), ka.String()) })
	b.expireProbation(time.Now().Add(probationTimeout))
	if got := control.Show(DeviceName); got != h.wgShow() {
		t.Fatalf("the peer on probation stays after its probation ended:\n%s", got)
	}
	if s := b.OnDemand(); s.Expired != 1 || s.Idled != 1 {
		t.Errorf("on-demand counters %+v, want one expired and one idled", s)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustLink(t *testing.T, k *netkerneltest.Kernel, name string) netlink.Link {
	t.Helper()
	l, err := k.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestStackSeparateOnFakes: Mode "separate" on a dual-stack network is a
// device per family with one key: weft-wg holds each peer's IPv4 subnet
// at its PublicIP, weft-wg-v6 its IPv6 subnet at its PublicIPv6 and
// BackendV6Data's port, and a rotation reaches both devices.
func TestStackSeparateOnFakes(t *testing.T) {
	k := netkerneltest.NewKernel()
	ext := k.AddExternal("ext0", netip.MustParsePrefix("192.168.50.1/24"), 1500)
	cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48","Backend":{"Type":"wireguard","Implementation":"kernel"}}`))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewStack(cfg, ext, filepath.Join(t.TempDir(), "key"), k, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	control := wireguardtest.New(func(name string) bool { _, err := k.LinkByName(name); return err == nil })
	for _, d := range s.Devices() {
		d.SetControl(control)
	}
	if err := s.Setup(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kp := mustKey(t)
	v6 := netip.MustParseAddr("fd00::2")
	p := wgPeer("10.5.2.0/24", "192.168.50.2", data(kp, 51820))
	p = p.WithIPv6(netip.MustParsePrefix("fc00:5:0:2::/64"), v6, json.RawMessage(data(kp, 51821)))
	self := self("10.5.1.0/24")
	self.IPv6Subnet = netip.MustParsePrefix("fc00:5:0:1::/64")
	d := mesh.Desired{Network: cfg.Network, IPv6Network: cfg.IPv6Network, Self: self, Peers: []mesh.Peer{p}}
	if err := s.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if got := control.Show(DeviceName); !strings.Contains(got, peerText(kp, "192.168.50.2:51820", "10.5.2.0/24")) {
		t.Errorf("%s:\n%s", DeviceName, got)
	}
	if got := control.Show(DeviceNameIPv6); !strings.Contains(got, peerText(kp, "[fd00::2]:51821", "fc00:5:0:2::/64")) || !strings.Contains(got, "listening port: 51821") {
		t.Errorf("%s:\n%s", DeviceNameIPv6, got)
	}
	if changed, err := s.ReloadKey(true); err != nil || !changed {
		t.Fatalf("rotation: %v %v", changed, err)
	}
	if err := s.Apply(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	pub := func(name string) string { dev, _ := control.Device(name); return dev.PublicKey.String() }
	if pub(DeviceName) != pub(DeviceNameIPv6) || pub(DeviceName) != string(s.BackendData()[len(`{"PublicKey":"`):len(`{"PublicKey":"`)+44]) {
		t.Errorf("after a rotation the devices hold %s and %s; the lease says %s", pub(DeviceName), pub(DeviceNameIPv6), s.BackendData())
	}
}
