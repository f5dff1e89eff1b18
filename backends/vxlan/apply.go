package vxlan

import (
	"bytes"
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
	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Backend programs a kernel VXLAN device. The zero value is not usable; use New.
type Backend struct {
	opts Options
	ext  underlay.ExternalInterface
	// name is the device's: weft.<VNI>, or weft-v6.<VNI> for the IPv6 half.
	name string
	// src is the device's local VTEP address: the external interface's
	// IPv4 address, or its IPv6 one for the IPv6 half.
	src    netip.Addr
	ipv6   bool
	mac    net.HardwareAddr
	mtu    int
	kernel netkernel.Kernel
	log    *slog.Logger
	// macHolders are the leases publishing each VTEP MAC in the state last
	// applied whole; nil until then (a delta then asks for a whole apply).
	macHolders map[MAC]int
	// noNexthops: the kernel refused nexthop objects, so the IPv4 peer
	// routes carry their gateways (as the IPv6 half's always do: the
	// kernel's IPv6 routes have no shared-route lookup to speed up).
	noNexthops bool
	// nexthopsTaken are the nexthop IDs other programs held at the last
	// whole apply, which deltas leave alone.
	nexthopsTaken map[uint32]bool
}

// New parses the options; the backend programs kernel.
func New(raw json.RawMessage, ext underlay.ExternalInterface, publicIP netip.Addr, kernel netkernel.Kernel, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(raw)
	if err != nil {
		return nil, err
	}
	mtu := options.DeviceMTU(opts.MTU, ext.MTU, Overhead)
	if opts.PortDefaulted {
		log.Info(`vxlan "Port": 0 means the kernel's default port, 8472, as in flannel`)
	}
	return &Backend{opts: opts, ext: ext, name: opts.DeviceName(), src: ext.Addr, mac: StableMAC(publicIP, opts.VNI), mtu: mtu, kernel: kernel,
		log: log.With("component", "vxlan", "device", opts.DeviceName())}, nil
}

// KeepMAC keeps the VTEP MAC this host published before (data: its
// previous lease's BackendData of this family) when it is for this VNI:
// StableMAC follows the public IP, and an address change must not change
// the MAC the peers know. It is called before Setup.
func (b *Backend) KeepMAC(data json.RawMessage) {
	var prev BackendData
	if json.Unmarshal(data, &prev) != nil || prev.VNI != b.opts.VNI {
		return
	}
	if mac, err := net.ParseMAC(prev.VtepMAC); err == nil && len(mac) == 6 && mac[0]&1 == 0 && !bytes.Equal(mac, make([]byte, 6)) {
		b.mac = mac
	}
}

// NewIPv6 is New for the IPv6 half of a dual-stack network, as flannel
// makes it: a second device, weft-v6.<VNI> (flannel-v6.<VNI> renamed), of
// the same VNI and port over the IPv6 underlay from the external
// interface's IPv6 address, with a VTEP MAC of its own (published as
// BackendV6Data). It is driven with the IPv6 half of each desired state
// (mesh.Desired.IPv6Half).
func NewIPv6(raw json.RawMessage, ext underlay.ExternalInterface, publicIPv6 netip.Addr, kernel netkernel.Kernel, log *slog.Logger) (*Backend, error) {
	b, err := New(raw, ext, publicIPv6, kernel, log)
	if err != nil {
		return nil, err
	}
	b.ipv6, b.name, b.src = true, b.opts.DeviceNameIPv6(), ext.AddrIPv6
	b.mtu = options.DeviceMTU(b.opts.MTU, ext.MTU, OverheadIPv6)
	b.log = log.With("component", "vxlan", "device", b.name)
	return b, nil
}

// Footprint is what the vxlan backend leaves on a host: weft.<VNI>.
func Footprint() netkernel.Footprint {
	return netkernel.Footprint{Links: []string{"weft.#", "weft-v6.#"}}
}

// MTU is the device's (and containers') MTU.
func (b *Backend) MTU() int { return b.mtu }

// BackendData is what the lease publishes: VNI and VTEP MAC.
func (b *Backend) BackendData() json.RawMessage { return EncodeBackendData(b.opts.VNI, b.mac) }

// Setup creates the device or adopts a matching one left by an earlier run.
func (b *Backend) Setup(context.Context) error {
	_, _, err := b.ensureDevice()
	return err
}

// ensureDevice returns the device, creating it, or recreating it when it
// was changed by hand so that it no longer matches the options; created
// says the device is new (and holds no entries yet).
func (b *Backend) ensureDevice() (dev *netlink.Vxlan, created bool, err error) {
	name := b.name
	if link, err := b.kernel.LinkByName(name); err == nil {
		if vx, ok := link.(*netlink.Vxlan); ok && b.matches(vx) {
			if vx.Attrs().Flags&net.FlagUp == 0 {
				if err := b.kernel.LinkSetUp(vx); err != nil {
					return nil, false, fmt.Errorf("bringing %s up: %w", name, err)
				}
			}
			return vx, false, nil
		}
		b.log.Warn("device does not match the config (the external interface or its address changed, or it was changed by hand); recreating it")
		if err := b.kernel.LinkDel(link); err != nil {
			return nil, false, fmt.Errorf("removing mismatched %s: %w", name, err)
		}
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: name, MTU: b.mtu, HardwareAddr: b.mac},
		VxlanId:      b.opts.VNI,
		VtepDevIndex: b.ext.Index,
		SrcAddr:      b.src.AsSlice(),
		Port:         b.opts.Port,
		Learning:     b.opts.Learning,
		GBP:          b.opts.GBP,
	}
	if err := b.kernel.LinkAdd(want); err != nil {
		// flanneld's device of the same VNI and port, left on a host moving
		// from flannel, makes the kernel refuse a second one.
		flannel := fmt.Sprintf("flannel.%d", b.opts.VNI)
		if _, ferr := b.kernel.LinkByName(flannel); ferr == nil {
			return nil, false, fmt.Errorf("creating vxlan device %s (VNI %d, port %d): flanneld's %s, left on this host, holds that VNI and port: "+
				"stop flanneld and remove what it left with `weftctl cleanup --flannel` (or `ip link del %s`): %w",
				name, b.opts.VNI, b.opts.Port, flannel, flannel, err)
		}
		return nil, false, fmt.Errorf("creating vxlan device %s (VNI %d, port %d on %s): %w", name, b.opts.VNI, b.opts.Port, b.ext.Name, err)
	}
	link, err := b.kernel.LinkByName(name)
	if err != nil {
		return nil, false, err
	}
	if err := b.kernel.LinkSetUp(link); err != nil {
		return nil, false, fmt.Errorf("bringing %s up: %w", name, err)
	}
	b.log.Info("vxlan device created", "vni", b.opts.VNI, "port", b.opts.Port, "vtep_mac", b.mac.String(), "mtu", b.mtu)
	vx, _ := link.(*netlink.Vxlan)
	return vx, true, nil
}

func (b *Backend) matches(vx *netlink.Vxlan) bool {
	return vx.VxlanId == b.opts.VNI && vx.Port == b.opts.Port && vx.VtepDevIndex == b.ext.Index &&
		netkernel.Addr(vx.SrcAddr) == b.src && vx.Learning == b.opts.Learning && vx.GBP == b.opts.GBP &&
		vx.Attrs().HardwareAddr.String() == b.mac.String() && vx.Attrs().MTU == b.mtu
}

// Apply makes the device, its address, and every peer's route, neighbour
// and FDB entry match the plan, compared with what the kernel holds; it
// adds before it deletes and returns all errors met, joined.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	dev, _, err := b.ensureDevice()
	if err != nil {
		return err
	}
	state, errs, holders := plan(d, b.opts, b.ext)
	b.macHolders = holders
	idx := dev.Attrs().Index
	errs = append(errs, netkernel.EnsureOnlyAddress(b.kernel, dev, netip.PrefixFrom(d.Self.Subnet.Addr(), d.Self.Subnet.Addr().BitLen()))...)
	nhs, err := b.readNexthops(idx)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	b.nexthopsTaken = nhs.Taken()
	have, err := b.kernelEntries(idx, nhs)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	return errors.Join(append(errs, b.sync(idx, have, state, nhs)...)...)
}

// readNexthops reads the kernel's nexthop objects for a whole apply of the
// IPv4 device's routes; nil when its routes carry their gateways.
func (b *Backend) readNexthops(idx int) (*netkernel.Nexthops, error) {
	if b.ipv6 || b.noNexthops {
		return nil, nil
	}
	nhs, err := netkernel.ReadNexthops(b.kernel, idx)
	if errors.Is(err, netkernel.ErrNoNexthops) {
		b.noNexthops = true
		b.log.Info("peer routes carry their gateways: the kernel has no nexthop objects (Linux 5.3 and later have them)", "err", err)
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing nexthop objects: %w", err)
	}
	return nhs, nil
}

// deltaNexthops are the nexthop objects a delta's routes go through; nil
// when the routes carry their gateways.
func (b *Backend) deltaNexthops(idx int) *netkernel.Nexthops {
	if b.ipv6 || b.noNexthops {
		return nil
	}
	return netkernel.DeltaNexthops(idx, b.nexthopsTaken)
}

// ApplyDelta changes only the entries of the peers in the delta: their old
// plan stands for what the kernel holds, so no table is dumped and the
// cost does not grow with the number of peers. The device is still looked
// up (one call): one deleted by hand is recreated at once, and then filled
// by a whole apply (mesh.ErrWholeApply).
func (b *Backend) ApplyDelta(_ context.Context, d mesh.Delta) error {
	dev, created, err := b.ensureDevice()
	if err != nil {
		return err
	}
	if created || b.macHolders == nil || !deltaStandsAlone(d.Old, d.New, b.macHolders) {
		return mesh.ErrWholeApply
	}
	for _, p := range d.Old {
		if mac, ok := peerMAC(p); ok {
			delete(b.macHolders, mac)
		}
	}
	for _, p := range d.New {
		if mac, ok := peerMAC(p); ok {
			b.macHolders[mac] = 1
		}
	}
	idx := dev.Attrs().Index
	before, _ := Plan(d.Before(), b.opts, b.ext)
	after, errs := Plan(d.After(), b.opts, b.ext)
	nhs := b.deltaNexthops(idx)
	return errors.Join(append(errs, b.sync(idx, b.plannedEntries(idx, before, nhs), after, nhs)...)...)
}

// fdbKey identifies an FDB entry: a VTEP MAC and where frames for it go
// (As16: a netip.Addr holds a pointer, which a map of 50,000 of them has
// the collector look at, and takes 24 bytes).
type fdbKey struct {
	mac MAC
	dst [16]byte
}

// entries are the kernel objects for peers, keyed the way they are
// compared, as what a sync compares and deletes by: maps of whole
// netlink.Neigh values were 12 MB each at 50,000 peers, at every resync.
type entries struct {
	neighbors map[[16]byte]MAC // by As16 of the address, as fdbKey
	fdb       map[fdbKey]struct{}
	routes    map[netip.Prefix]netkernel.Hop
}

// kernelEntries reads what the kernel holds on the device (and weft's
// direct routes on the external link), each dump streamed into the maps a
// sync compares, never held as a list: a dump the kernel interrupts is
// read again from the start.
func (b *Backend) kernelEntries(idx int, nhs *netkernel.Nexthops) (entries, error) {
	e := entries{}
	var err error
	e.neighbors, err = netkernel.Retry(func() (map[[16]byte]MAC, error) {
		out := map[[16]byte]MAC{}
		err := b.kernel.NeighEach(idx, b.family(), func(n netkernel.Neighbour) {
			out[n.IP.As16()] = n.MAC
		})
		return out, err
	})
	if err != nil {
		return e, fmt.Errorf("listing neighbours: %w", err)
	}
	e.fdb, err = netkernel.Retry(func() (map[fdbKey]struct{}, error) {
		out := map[fdbKey]struct{}{}
		err := b.kernel.NeighEach(idx, unix.AF_BRIDGE, func(n netkernel.Neighbour) {
			// Entries without a destination (the device's own, multicast)
			// are the kernel's.
			if n.IP.IsValid() {
				out[fdbKey{n.MAC, n.IP.As16()}] = struct{}{}
			}
		})
		return out, err
	})
	if err != nil {
		return e, fmt.Errorf("listing FDB: %w", err)
	}
	e.routes, err = netkernel.TunnelRoutes(b.kernel, b.ipv6, idx, b.ext.Index, nhs)
	return e, err
}

func (b *Backend) kernelRoutes(idx int) (map[netip.Prefix]netkernel.Hop, error) {
	return netkernel.PeerRoutes(b.kernel, b.ipv6, idx, b.ext.Index)
}

// family is the address family of the device's overlay addresses.
func (b *Backend) family() int {
	if b.ipv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// plannedEntries are the kernel objects a plan puts on the device.
func (b *Backend) plannedEntries(idx int, s State, nhs *netkernel.Nexthops) entries {
	e := entries{neighbors: map[[16]byte]MAC{}, fdb: map[fdbKey]struct{}{}, routes: netkernel.PlannedTunnelRoutes(idx, b.ext.Index, s.Routes(), nhs)}
	for n := range s.EachNeighbor() {
		e.neighbors[n.IP.As16()] = n.MAC
	}
	for f := range s.EachFDB() {
		e.fdb[fdbKey{f.MAC, f.Dst.As16()}] = struct{}{}
	}
	return e
}

func neighbor(idx int, n Neighbor) *netlink.Neigh {
	mac := net.HardwareAddr(n.MAC[:])
	family := netlink.FAMILY_V4
	if n.IP.Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: idx, Family: family, State: netlink.NUD_PERMANENT, IP: n.IP.AsSlice(), HardwareAddr: mac}
}

func fdbEntry(idx int, f FDB) *netlink.Neigh {
	mac := net.HardwareAddr(f.MAC[:])
	return &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
		IP: f.Dst.AsSlice(), HardwareAddr: mac}
}

// sync makes have into want kind by kind (neighbours before FDB entries
// before routes, so a route never points at a VTEP the kernel cannot
// resolve): set what is missing or different, then delete the rest. have
// is used up.
func (b *Backend) sync(idx int, have entries, want State, nhs *netkernel.Nexthops) []error {
	var errs []error
	// have is used up as it is compared: an entry wanted is taken out of
	// it, and what is left is deleted. (Sets of what stays were three more
	// maps of every peer at a resync.)
	for w := range want.EachNeighbor() {
		mac, ok := have.neighbors[w.IP.As16()]
		delete(have.neighbors, w.IP.As16())
		if ok && mac == w.MAC {
			continue
		}
		if err := b.kernel.NeighSet(neighbor(idx, w)); err != nil {
			errs = append(errs, fmt.Errorf("neighbour %s lladdr %s: %w", w.IP, w.MAC, err))
		}
	}
	for ip16, mac := range have.neighbors {
		ip := netip.AddrFrom16(ip16).Unmap()
		if err := b.kernel.NeighDel(neighbor(idx, Neighbor{IP: ip, MAC: mac})); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing neighbour %s: %w", ip, err))
		}
	}
	for w := range want.EachFDB() {
		k := fdbKey{w.MAC, w.Dst.As16()}
		if _, ok := have.fdb[k]; ok {
			delete(have.fdb, k)
			continue
		}
		if err := b.kernel.NeighSet(fdbEntry(idx, w)); err != nil {
			errs = append(errs, fmt.Errorf("fdb %s dst %s: %w", w.MAC, w.Dst, err))
		}
	}
	for k := range have.fdb {
		dst := netip.AddrFrom16(k.dst).Unmap()
		if err := b.kernel.NeighDel(fdbEntry(idx, FDB{MAC: k.mac, Dst: dst})); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing fdb %s dst %s: %w", k.mac, dst, err))
		}
	}
	return append(errs, netkernel.SyncTunnelRoutes(b.kernel, idx, b.ext.Index, have.routes, want.EachRoute(), nhs, nil)...)
}

// Cleanup removes the device (its routes, neighbours and FDB go with it)
// and any direct route weft installed on the external link.
func (b *Backend) Cleanup(context.Context) error {
	var errs []error
	if link, err := b.kernel.LinkByName(b.name); err == nil {
		errs = append(errs, b.kernel.LinkDel(link))
	}
	routes, err := b.kernelRoutes(-1)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, netkernel.SyncPeerRoutes(b.kernel, -1, b.ext.Index, routes, nil, nil)...)
	return errors.Join(errs...)
}

// Close leaves the device and its entries in place for the next run.
func (b *Backend) Close() error { return nil }
