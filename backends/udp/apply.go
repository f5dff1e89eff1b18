package udp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/mesh"
)

// Backend is the udp backend. The zero value is not usable; use New.
type Backend struct {
	// peerRoutes: a route per peer, not the Network (SetPeerRoutes).
	peerRoutes bool
	opts       Options
	ext        underlay.ExternalInterface
	subnetLen  int
	mtu        int
	kernel     netkernel.Kernel
	log        *slog.Logger

	mu sync.Mutex
	dp *dataplane
}

// New parses the options; nothing is created before Setup. The TUN's
// address and route are kept through kernel.
func New(cfg *lease.Config, ext underlay.ExternalInterface, kernel netkernel.Kernel, log *slog.Logger) (*Backend, error) {
	opts, err := ParseOptions(cfg.Backend.Raw)
	if err != nil {
		return nil, err
	}
	mtu := options.DeviceMTU(opts.MTU, ext.MTU, Overhead)
	return &Backend{opts: opts, ext: ext, subnetLen: cfg.SubnetLen, mtu: mtu, kernel: kernel, log: log.With("component", "udp")}, nil
}

// Footprint is what the udp backend leaves on a host: its persistent TUN.
func Footprint() netkernel.Footprint { return netkernel.Footprint{Links: []string{DeviceName}} }

// MTU is the TUN's (and containers') MTU.
func (b *Backend) MTU() int { return b.mtu }

// Setup creates the TUN (or re-attaches to the persistent one a previous
// run left, with its address and route) and opens the UDP socket.
func (b *Backend) Setup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, err := tun.CreateTUN(DeviceName, b.mtu)
	if err != nil {
		return fmt.Errorf("creating TUN %s: %w", DeviceName, err)
	}
	if err := netkernel.SetTUNPersist(t, true); err != nil {
		t.Close()
		return fmt.Errorf("making %s persistent: %w", DeviceName, err)
	}
	bind := conn.NewStdNetBind()
	recv, _, err := bind.Open(uint16(b.opts.Port))
	if err != nil {
		t.Close()
		return fmt.Errorf(`opening UDP port %d (key "Backend.Port"): %w`, b.opts.Port, err)
	}
	if s, ok := bind.(conn.BindSocketToInterface); ok {
		// Send from the external interface only, as flannel binds to it.
		if err := s.BindSocketToInterface4(uint32(b.ext.Index), false); err != nil {
			b.log.Warn("cannot pin the UDP socket to the external interface", "iface", b.ext.Name, "err", err)
		}
	}
	b.dp = newDataplane(t, bind, recv, b.log)
	b.dp.start()
	b.log.Info("udp data path started", "device", DeviceName, "port", b.opts.Port, "mtu", b.mtu,
		"tun_batch", t.BatchSize(), "udp_batch", bind.BatchSize())
	return nil
}

// Apply swaps in the peer table and keeps the TUN's address and route.
func (b *Backend) Apply(_ context.Context, d mesh.Desired) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dp == nil {
		return errors.New("udp backend used before Setup")
	}
	var errs []error
	if err := b.dp.setTable(NewTable(d, b.subnetLen, b.opts.Port)); err != nil {
		errs = append(errs, err)
	}
	halves := []netkernel.TunnelHalf{{Self: d.Self.Subnet, Network: d.Network}}
	if b.peerRoutes {
		// Beside WireGuard, which routes the Network through its device:
		// a route per udp peer, more specific than the Network's.
		// A peer on standby (a switch to udp under way) is in the table,
		// so its datagrams are taken, but not routed here yet.
		halves = []netkernel.TunnelHalf{{Self: d.Self.Subnet}}
		for _, p := range d.Peers {
			if !p.Standby {
				halves = append(halves, netkernel.TunnelHalf{Network: p.Subnet})
			}
		}
	}
	errs = append(errs, netkernel.EnsureTunnelLinkFor(b.kernel, DeviceName, b.mtu, halves)...)
	return errors.Join(errs...)
}

// SetPeerRoutes makes the TUN carry a route per peer instead of the
// Network's, while a switch runs udp beside WireGuard (which routes the
// Network through its own device).
func (b *Backend) SetPeerRoutes(on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.peerRoutes = on
}

// Drops returns the datagrams refused so far, by reason.
func (b *Backend) Drops() map[string]uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dp == nil {
		return nil
	}
	return b.dp.Drops()
}

// Close stops the loops; the persistent TUN keeps its address and route,
// so a restarted weftd only pauses the data path.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dp != nil {
		b.dp.stop()
		b.dp = nil
	}
	return nil
}

// Cleanup removes the TUN for good (its address and route go with it).
func (b *Backend) Cleanup(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dp != nil {
		netkernel.SetTUNPersist(b.dp.tun, false)
		b.dp.stop()
		b.dp = nil
	}
	return netkernel.DeleteLink(b.kernel, DeviceName)
}

// BackendData is empty for udp, as in flannel.
func (b *Backend) BackendData() json.RawMessage { return nil }
