package alloc

import (
	"context"
	"encoding/json"

	"github.com/weftnet/weft/backends/netkernel"
	"github.com/weftnet/weft/backends/underlay"
	"github.com/weftnet/weft/mesh"
)

// Backend is the alloc backend. The zero value is not usable; use New.
type Backend struct {
	mtu int
}

// New returns an alloc backend; containers get the external interface's
// MTU, as flannel's alloc writes it.
func New(ext underlay.ExternalInterface) *Backend { return &Backend{mtu: ext.MTU} }

// Footprint is empty: alloc leaves nothing on a host.
func Footprint() netkernel.Footprint { return netkernel.Footprint{} }

// Setup does nothing.
func (b *Backend) Setup(context.Context) error { return nil }

// BackendData is empty: flannel's alloc publishes neither BackendType nor
// BackendData.
func (b *Backend) BackendData() json.RawMessage { return nil }

// MTU is the external interface's.
func (b *Backend) MTU() int { return b.mtu }

// Apply does nothing: the peers' subnets are routed elsewhere.
func (b *Backend) Apply(context.Context, mesh.Desired) error { return nil }

// Cleanup has nothing to remove.
func (b *Backend) Cleanup(context.Context) error { return nil }

// Close does nothing.
func (b *Backend) Close() error { return nil }
