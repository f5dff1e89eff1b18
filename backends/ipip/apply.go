package ipip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Backend programs the ipip device and its routes. The zero value is not
// usable; use New.
type Backend struct {
	opts   Options
	ext    underlay.ExternalInterface
	mtu    int
	kernel netkernel.Kernel
	log    *slog.Logger
}

// New parses the options; the backend programs kernel.
func New(raw json.RawMessage, ext underlay.ExternalInterface, kernel netkernel.Kernel, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	if ext.MTU-Overhead < 576 {
		return nil, fmt.Errorf("the MTU %d of %s is too small for ipip (it needs %d for IPv4's 576 inside)", ext.MTU, ext.Name, 576+Overhead)
	}
	if !ext.Addr.Is4() {
		return nil, fmt.Errorf("ipip tunnels over IPv4: %s has no IPv4 address", ext.Name)
	}
	return &Backend{opts: opts, ext: ext, mtu: ext.MTU - Overhead, kernel: kernel,
		log: log.With("component", "ipip", "device", DeviceName)}, nil
}

// Footprint is what the ipip backend leaves on a host: weft.ipip.
func Footprint() netkernel.Footprint { return netkernel.Footprint{Links: []string{DeviceName}} }

// MTU is the device's (and containers'): the external link's less 20.
func (b *Backend) MTU() int { return b.mtu }

// BackendData is empty: peers need only the PublicIP, as in flannel.
func (b *Backend) BackendData() json.RawMessage { return nil }

// Setup creates the device or adopts a matching one left by an earlier run.
func (b *Backend) Setup(context.Context) error {
	_, err := b.ensureDevice()
	return err
}

// ensureDevice returns the device, creating it, or recreating it when it
// no longer matches (another local address, a fixed remote, another MTU).
func (b *Backend) ensureDevice() (netlink.Link, error) {
	if link, err := b.kernel.LinkByName(DeviceName); err == nil {
		if tun, ok := link.(*netlink.Iptun); ok && b.matches(tun) {
			if tun.Attrs().Flags&net.FlagUp == 0 {
				if err := b.kernel.LinkSetUp(tun); err != nil {
					return nil, fmt.Errorf("bringing %s up: %w", DeviceName, err)
				}
			}
			return tun, nil
		}
		b.log.Warn("device does not match the config (changed by hand?); recreating it")
		if err := b.kernel.LinkDel(link); err != nil {
			return nil, fmt.Errorf("removing mismatched %s: %w", DeviceName, err)
		}
	}
	want := &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceName, MTU: b.mtu}, Local: b.ext.Addr.AsSlice()}
	if err := b.kernel.LinkAdd(want); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("creating ipip device %s: this kernel has no ipip support (load the ipip module: modprobe ipip), or use vxlan: %w", DeviceName, err)
		}
		return nil, fmt.Errorf("creating ipip device %s (local %s): %w", DeviceName, b.ext.Addr, err)
	}
	link, err := b.kernel.LinkByName(DeviceName)
	if err != nil {
		return nil, err
	}
	if err := b.kernel.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", DeviceName, err)
	}
	b.log.Info("ipip device created", "local", b.ext.Addr, "mtu", b.mtu)
	return link, nil
}

func (b *Backend) matches(tun *netlink.Iptun) bool {
	remote := netkernel.Addr(tun.Remote)
	return netkernel.Addr(tun.Local) == b.ext.Addr && (!remote.IsValid() || remote.IsUnspecified()) && tun.Attrs().MTU == b.mtu
}

// Apply makes the device, its address (the subnet's network address /32,
// as flannel's) and every peer's route match the plan, compared with what
// the kernel holds.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	dev, err := b.ensureDevice()
	if err != nil {
		return err
	}
	idx := dev.Attrs().Index
	errs := netkernel.EnsureOnlyAddress(b.kernel, dev, netip.PrefixFrom(d.Self.Subnet.Addr(), 32))
	current, err := b.kernelRoutes(idx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	return errors.Join(append(errs, netkernel.SyncPeerRoutes(b.kernel, idx, b.ext.Index, current, Plan(d, b.opts, b.ext), nil)...)...)
}

// ApplyDelta changes only the routes of the peers in the delta: their old
// plan stands for what the kernel holds, so no table is dumped. A device
// deleted by hand is recreated and then filled by a whole apply.
func (b *Backend) ApplyDelta(_ context.Context, d mesh.Delta) error {
	dev, err := b.kernel.LinkByName(DeviceName)
	if err != nil {
		if _, err := b.ensureDevice(); err != nil {
			return err
		}
		return mesh.ErrWholeApply
	}
	idx := dev.Attrs().Index
	current := netkernel.PlannedRoutes(idx, b.ext.Index, Plan(d.Before(), b.opts, b.ext))
	return errors.Join(netkernel.SyncPeerRoutes(b.kernel, idx, b.ext.Index, current, Plan(d.After(), b.opts, b.ext), nil)...)
}

// kernelRoutes are weft's IPv4 routes on the device and, for
// DirectRouting, on the external link.
func (b *Backend) kernelRoutes(idx int) (map[netip.Prefix]netkernel.Hop, error) {
	routes, err := netkernel.PeerRoutes(b.kernel, false, idx, b.ext.Index)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	return routes, nil
}

// Cleanup removes the device (its routes go with it) and any direct route
// weft installed on the external link.
func (b *Backend) Cleanup(context.Context) error {
	var errs []error
	if link, err := b.kernel.LinkByName(DeviceName); err == nil {
		errs = append(errs, b.kernel.LinkDel(link))
	}
	routes, err := b.kernelRoutes(-1)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	return errors.Join(append(errs, netkernel.SyncRoutes(b.kernel, routes, nil, nil)...)...)
}

// Close leaves the device and its routes in place for the next run.
func (b *Backend) Close() error { return nil }
