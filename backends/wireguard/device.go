package wireguard

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends/netutil"
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
	dev  *device.Device
	tun  tun.Device
	uapi net.Listener
	done chan struct{}
}

// openDevice creates or adopts the device. opts.Implementation is auto,
// kernel or userspace; auto prefers an existing device's kind, then the
// kernel. Log lines and errors name where the choice came from.
func openDevice(k netutil.Kernel, name string, opts Options, mtu int, log *slog.Logger) (*wgDevice, error) {
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
		return startUserspace(name, mtu, log)
	}
	if existing != nil && existing.Type() == "wireguard" {
		log.Info("using kernel WireGuard", "device", name, "why", "adopting the existing kernel device")
		return &wgDevice{name: name, kind: ImplKernel}, nil
	}
	if existing != nil {
		log.Info("using wireguard-go in weftd", "device", name, "why", "re-attaching to the persistent TUN left by the previous run")
		return startUserspace(name, mtu, log)
	}
	kerr := ensureKernelLink(k, name, nil)
	if kerr == nil {
		log.Info("using kernel WireGuard", "device", name, "why", "the kernel supports WireGuard links")
		return &wgDevice{name: name, kind: ImplKernel}, nil
	}
	log.Info("using wireguard-go in weftd", "device", name, "why", kerr.Error())
	return startUserspace(name, mtu, log)
}

func ensureKernelLink(k netutil.Kernel, name string, existing netlink.Link) error {
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
func startUserspace(name string, mtu int, log *slog.Logger) (*wgDevice, error) {
	tunDev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("creating TUN %s for wireguard-go: %w", name, err)
	}
	if err := netutil.SetTUNPersist(tunDev, true); err != nil {
		tunDev.Close()
		return nil, fmt.Errorf("making TUN %s persistent: %w", name, err)
	}
	wlog := log.With("component", "wireguard-go")
	logger := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf:   func(format string, args ...any) { wlog.Warn(fmt.Sprintf(format, args...)) },
	}
	dev := device.NewDevice(tunDev, conn.NewDefaultBind(), logger)
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
	d := &wgDevice{name: name, kind: ImplUserspace, dev: dev, tun: tunDev, uapi: uapi, done: make(chan struct{})}
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

// close stops wireguard-go (the TUN itself stays) or does nothing for the
// kernel device, which lives on its own.
func (d *wgDevice) close() {
	if d.kind != ImplUserspace {
		return
	}
	d.uapi.Close()
	<-d.done
	d.dev.Close()
}

// remove deletes the interface for good.
func (d *wgDevice) remove(k netutil.Kernel) error {
	if d.kind == ImplUserspace {
		// Clear persistence first so the kernel frees it when we let go.
		netutil.SetTUNPersist(d.tun, false)
	}
	d.close()
	return netutil.DeleteLink(k, d.name)
}
