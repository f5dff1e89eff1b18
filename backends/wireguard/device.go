package wireguard

import (
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends/netkernel"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// wgDevice is the WireGuard interface, kernel or userspace. Either way it is
// configured through wgctrl: netlink for the kernel, the UAPI socket
// (/var/run/wireguard/<name>.sock) for wireguard-go.
type wgDevice struct {
	name string
	kind string // ImplKernel or ImplUserspace
	// userspace only:
	peers *onDemand
	dev   *device.Device
	tun   tun.Device
	uapi  net.Listener
	done  chan struct{}
}

// openDevice creates or adopts the device. opts.Implementation is auto,
// kernel or userspace; auto prefers an existing device's kind, then the
// kernel. Log lines and errors name where the choice came from.
// deviceMTU is a device's MTU and that of the underlay it sends over.
type deviceMTU struct{ device, underlay int }

func openDevice(k netkernel.Kernel, name string, opts Options, mtu deviceMTU, peers *onDemand, log *slog.Logger) (*wgDevice, error) {
	impl, from := opts.Implementation, opts.ImplementationFrom
	if from == "" {
		from = `key "Backend.Implementation"`
	}
	existing, _ := k.LinkByName(name)
	if existing != nil && existing.Type() != "wireguard" && existing.Type() != "tuntap" && existing.Type() != "tun" {
		return nil, fmt.Errorf("interface %s exists but is a %s, not WireGuard; remove it (ip link del %s) or run `weftctl cleanup`",
			name, existing.Type(), name)
	}
	switch impl {
	case ImplKernel:
		if err := ensureKernelLink(k, name, existing); err != nil {
			return nil, fmt.Errorf(`%s: "kernel", but %v; use "auto" or "userspace"`, from, err)
		}
		log.Info("using kernel WireGuard", "device", name, "why", from+` is "kernel"`)
		return &wgDevice{name: name, kind: ImplKernel}, nil
	case ImplUserspace:
		if existing != nil && existing.Type() == "wireguard" {
			return nil, fmt.Errorf(`%s: "userspace", but %s is a kernel WireGuard device; remove it (ip link del %s) or use "auto"`, from, name, name)
		}
		log.Info("using wireguard-go in weftd", "device", name, "why", from+` is "userspace"`)
		return startUserspaceDevice(name, mtu, peers, log)
	}
	if existing != nil && existing.Type() == "wireguard" {
		log.Info("using kernel WireGuard", "device", name, "why", "adopting the existing kernel device")
		return &wgDevice{name: name, kind: ImplKernel}, nil
	}
	if existing != nil {
		log.Info("using wireguard-go in weftd", "device", name, "why", "re-attaching to the persistent TUN left by the previous run")
		return startUserspaceDevice(name, mtu, peers, log)
	}
	kerr := ensureKernelLink(k, name, nil)
	if kerr == nil {
		log.Info("using kernel WireGuard", "device", name, "why", "the kernel supports WireGuard links")
		return &wgDevice{name: name, kind: ImplKernel}, nil
	}
	log.Info("using wireguard-go in weftd", "device", name, "why", kerr.Error())
	return startUserspaceDevice(name, mtu, peers, log)
}

// startUserspaceDevice starts wireguard-go (startUserspace); the pure
// tier's tests put a device without wireguard-go in its place, whose
// peers the fake control keeps.
var startUserspaceDevice = startUserspace

func ensureKernelLink(k netkernel.Kernel, name string, existing netlink.Link) error {
	if existing != nil {
		if existing.Type() == "wireguard" {
			return nil
		}
		return fmt.Errorf("%s exists as a userspace TUN", name)
	}
	err := k.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("this kernel has no WireGuard support (ip link add type wireguard: %v)", err)
		}
		return fmt.Errorf("creating kernel WireGuard link %s: %v", name, err)
	}
	return nil
}

// startUserspace runs wireguard-go on a persistent TUN (created, or
// re-attached when a previous weftd left it) and serves its UAPI socket.
// The TUN and the UDP bind are wrapped so the on-demand table sees every
// packet first (a flag check per batch while the mode is off).
func startUserspace(name string, mtu deviceMTU, peers *onDemand, log *slog.Logger) (*wgDevice, error) {
	tunDev, err := tun.CreateTUN(name, mtu.device)
	if err != nil {
		return nil, fmt.Errorf("creating TUN %s for wireguard-go: %w", name, err)
	}
	if err := netkernel.SetTUNPersist(tunDev, true); err != nil {
		tunDev.Close()
		return nil, fmt.Errorf("making TUN %s persistent: %w", name, err)
	}
	wlog := log.With("component", "wireguard-go")
	logger := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, args ...any) { wlog.Warn(fmt.Sprintf(format, args...)) },
	}
	dev := device.NewDevice(&tunWrapper{Device: tunDev, peers: peers}, &bindWrapper{Bind: conn.NewDefaultBind(), peers: peers, underlayMTU: mtu.underlay}, logger)
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("opening UAPI socket for %s: %w", name, err)
	}
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		uapiFile.Close()
		dev.Close()
		return nil, fmt.Errorf("listening on UAPI socket for %s: %w", name, err)
	}
	d := &wgDevice{name: name, kind: ImplUserspace, peers: peers, dev: dev, tun: tunDev, uapi: uapi, done: make(chan struct{})}
	peers.start()
	go func() {
		defer close(d.done)
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	if err := dev.Up(); err != nil {
		d.close()
		return nil, fmt.Errorf("bringing up wireguard-go on %s: %w", name, err)
	}
	return d, nil
}

// addPeer configures one peer on a userspace device, in process (the
// on-demand mode's activation), and with kick starts a handshake at once.
func (d *wgDevice) addPeer(spec PeerSpec, kick bool) error {
	if d.dev == nil {
		return errors.New("not a userspace device")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\n",
		hex.EncodeToString(spec.PublicKey[:]), wireEndpoint(spec.Endpoint), int(spec.Keepalive/time.Second))
	if spec.PSK != nil {
		fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(spec.PSK[:]))
	}
	for _, p := range spec.AllowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p)
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		return err
	}
	if kick {
		if peer := d.dev.LookupPeer(device.NoisePublicKey(spec.PublicKey)); peer != nil {
			peer.SendKeepalive() // no session yet: this starts a handshake
		}
	}
	return nil
}

// wireEndpoint is ep as it may be sent to a WireGuard device: without a
// zone. The decoders refuse zones already; this keeps any that slipped
// past them out of the text protocol, where a newline in one would start
// a line of configuration of its own.
func wireEndpoint(ep netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ep.Addr().WithZone(""), ep.Port())
}

// close stops wireguard-go (the TUN itself stays) or does nothing for the
// kernel device, which lives on its own.
func (d *wgDevice) close() {
	if d.kind != ImplUserspace {
		return
	}
	if d.uapi != nil {
		d.uapi.Close()
		<-d.done
	}
	d.peers.stop() // before Close, which waits for the goroutines that wait on it
	if d.dev != nil {
		d.dev.Close()
	}
}

// remove deletes the interface for good.
func (d *wgDevice) remove(k netkernel.Kernel) error {
	if d.kind == ImplUserspace && d.tun != nil {
		// Clear persistence first so the kernel frees it when we let go.
		netkernel.SetTUNPersist(d.tun, false)
	}
	d.close()
	return netkernel.DeleteLink(k, d.name)
}
