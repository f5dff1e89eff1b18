package vxlan

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

	"github.com/weftnet/weft/backends/netutil"
	"github.com/weftnet/weft/mesh"
)

// Backend programs a kernel VXLAN device. The zero value is not usable; use New.
type Backend struct {
	opts   Options
	ext    netutil.ExternalInterface
	mac    net.HardwareAddr
	mtu    int
	handle *netlink.Handle
	log    *slog.Logger
}

// New parses the options; handle nil means this network namespace.
func New(raw json.RawMessage, ext netutil.ExternalInterface, publicIP netip.Addr, handle *netlink.Handle, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	if handle == nil {
		handle = &netlink.Handle{}
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = ext.MTU - Overhead
	}
	return &Backend{opts: opts, ext: ext, mac: StableMAC(publicIP, opts.VNI), mtu: mtu, handle: handle,
		log: log.With("component", "vxlan", "device", opts.DeviceName())}, nil
}

// MTU is the device's (and containers') MTU.
func (b *Backend) MTU() int { return b.mtu }

// BackendData is what the lease publishes: VNI and VTEP MAC.
func (b *Backend) BackendData() json.RawMessage { return EncodeBackendData(b.opts.VNI, b.mac) }

// Setup creates the device or adopts a matching one left by an earlier run.
func (b *Backend) Setup(context.Context) error {
	_, err := b.ensureDevice()
	return err
}

// ensureDevice returns the device, creating it, or recreating it when it
// was changed by hand so that it no longer matches the options.
func (b *Backend) ensureDevice() (*netlink.Vxlan, error) {
	name := b.opts.DeviceName()
	if link, err := b.handle.LinkByName(name); err == nil {
		if vx, ok := link.(*netlink.Vxlan); ok && b.matches(vx) {
			if vx.Attrs().Flags&net.FlagUp == 0 {
				if err := b.handle.LinkSetUp(vx); err != nil {
					return nil, fmt.Errorf("bringing %s up: %w", name, err)
				}
			}
			return vx, nil
		}
		b.log.Warn("device does not match the config (changed by hand?); recreating it")
		if err := b.handle.LinkDel(link); err != nil {
			return nil, fmt.Errorf("removing mismatched %s: %w", name, err)
		}
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: b.mtu, HardwareAddr: b.mac},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.ext.Index,
		SrcAddr:      b.ext.Addr.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	if err := b.handle.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("creating vxlan device %s (VNI %d, port %d on %s): %w", name, b.opts.VNI, b.opts.Port, b.ext.Name, err)
	}
	link, err := b.handle.LinkByName(name)
	if err != nil {
		return nil, err
	}
	if err := b.handle.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	b.log.Info("vxlan device created", "vni", b.opts.VNI, "port", b.opts.Port, "vtep_mac", b.mac, "mtu", b.mtu)
	vx, _ := link.(*netlink.Vxlan)
	return vx, nil
}

func (b *Backend) matches(vx *netlink.Vxlan) bool {
	return vx.VxlanId == b.opts.VNI && vx.Port == b.opts.Port && vx.VtepDevIndex == b.ext.Index &&
		netutil.Addr(vx.SrcAddr) == b.ext.Addr && vx.Learning == b.opts.Learning && vx.GBP == b.opts.GBP &&
		vx.Attrs().HardwareAddr.String() == b.mac.String() && vx.Attrs().MTU == b.mtu
}

// Apply makes the device, its address, and every peer's route, neighbour
// and FDB entry match the plan; it adds before it deletes and returns all
// errors met, joined.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	dev, err := b.ensureDevice()
	if err != nil {
		return err
	}
	state, errs := Plan(d, b.opts, b.ext)
	idx := dev.Attrs().Index
	errs = append(errs, b.ensureAddress(dev, netip.PrefixFrom(d.Self.Subnet.Addr(), 32))...)
	errs = append(errs, b.syncNeighbors(idx, state.Neighbors)...)
	errs = append(errs, b.syncFDB(idx, state.FDB)...)
	errs = append(errs, b.syncRoutes(idx, state.Routes)...)
	return errors.Join(errs...)
}

func (b *Backend) ensureAddress(dev netlink.Link, want netip.Prefix) []error {
	addrs, err := netutil.Retry(func() ([]netlink.Addr, error) { return b.handle.AddrList(dev, netlink.FAMILY_V4) })
	if err != nil {
		return []error{err}
	}
	var errs []error
	found := false
	for _, a := range addrs {
		if p, _ := netutil.Prefix(a.IPNet); p == want {
			found = true
		} else if err := b.handle.AddrDel(dev, &a); err != nil {
			errs = append(errs, fmt.Errorf("removing stale address %s: %w", a.IPNet, err))
		}
	}
	if !found {
		if err := b.handle.AddrAdd(dev, &netlink.Addr{IPNet: netutil.IPNet(want)}); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding %s: %w", want, err))
		}
	}
	return errs
}

func (b *Backend) syncNeighbors(idx int, want []Neighbor) []error {
	have, err := netutil.Retry(func() ([]netlink.Neigh, error) { return b.handle.NeighList(idx, netlink.FAMILY_V4) })
	if err != nil {
		return []error{fmt.Errorf("listing neighbours: %w", err)}
	}
	current := map[netip.Addr]string{}
	for _, n := range have {
		current[netutil.Addr(n.IP)] = n.HardwareAddr.String()
	}
	var errs []error
	keep := map[netip.Addr]bool{}
	for _, w := range want {
		keep[w.IP] = true
		if current[w.IP] == w.MAC {
			continue
		}
		mac, _ := net.ParseMAC(w.MAC)
		n := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: w.IP.AsSlice(), HardwareAddr: mac}
		if err := b.handle.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s lladdr %s: %w", w.IP, w.MAC, err))
		}
	}
	for _, n := range have {
		if !keep[netutil.Addr(n.IP)] {
			if err := b.handle.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("removing neighbour %s: %w", n.IP, err))
			}
		}
	}
	return errs
}

func (b *Backend) syncFDB(idx int, want []FDB) []error {
	have, err := netutil.Retry(func() ([]netlink.Neigh, error) { return b.handle.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return []error{fmt.Errorf("listing FDB: %w", err)}
	}
	type entry struct {
		mac string
		dst netip.Addr
	}
	current := map[entry]bool{}
	for _, n := range have {
		current[entry{n.HardwareAddr.String(), netutil.Addr(n.IP)}] = true
	}
	var errs []error
	keep := map[entry]bool{}
	for _, w := range want {
		e := entry{w.MAC, w.Dst}
		keep[e] = true
		if current[e] {
			continue
		}
		mac, _ := net.ParseMAC(w.MAC)
		n := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
			IP: w.Dst.AsSlice(), HardwareAddr: mac}
		if err := b.handle.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("fdb %s dst %s: %w", w.MAC, w.Dst, err))
		}
	}
	for _, n := range have {
		e := entry{n.HardwareAddr.String(), netutil.Addr(n.IP)}
		// Entries without a destination (the device's own, multicast) are the kernel's.
		if keep[e] || !e.dst.IsValid() {
			continue
		}
		n.Flags |= netlink.NTF_SELF
		if err := b.handle.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing fdb %s dst %s: %w", e.mac, e.dst, err))
		}
	}
	return errs
}

func (b *Backend) syncRoutes(idx int, want []Route) []error {
	owned, err := netutil.OwnedRoutes(b.handle)
	if err != nil {
		return []error{err}
	}
	current := map[netip.Prefix]netlink.Route{}
	for _, r := range owned {
		if r.LinkIndex != idx && r.LinkIndex != b.ext.Index {
			continue // another backend's (a switch of Backend.Type) is pruned by its own cleanup
		}
		if dst, ok := netutil.Prefix(r.Dst); ok {
			current[dst] = r
		}
	}
	var errs []error
	keep := map[netip.Prefix]bool{}
	for _, w := range want {
		keep[w.Dst] = true
		r := &netlink.Route{LinkIndex: idx, Dst: netutil.IPNet(w.Dst), Gw: w.Via.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
			Protocol: netutil.RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if w.Direct {
			r.LinkIndex, r.Flags = b.ext.Index, 0
		}
		if cur, ok := current[w.Dst]; ok && cur.LinkIndex == r.LinkIndex && netutil.Addr(cur.Gw) == w.Via {
			continue
		}
		if err := b.handle.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", w.Dst, w.Via, err))
		}
	}
	for dst, r := range current {
		if !keep[dst] {
			if err := b.handle.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("removing route %s: %w", dst, err))
			}
		}
	}
	return errs
}

// Cleanup removes the device (its routes, neighbours and FDB go with it)
// and any direct route weft installed on the external link.
func (b *Backend) Cleanup(context.Context) error {
	var errs []error
	if link, err := b.handle.LinkByName(b.opts.DeviceName()); err == nil {
		errs = append(errs, b.handle.LinkDel(link))
	}
	errs = append(errs, b.syncRoutes(-1, nil)...)
	return errors.Join(errs...)
}

// Close leaves the device and its entries in place for the next run.
func (b *Backend) Close() error { return nil }
