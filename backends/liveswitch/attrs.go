package liveswitch

import (
	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
)

// Attrs are the lease's attributes during a switch: base's addresses, the
// visible backend's type and data (what flannel's hosts read), and the
// other backends of paths (Switching.Paths, the primary first) in
// WeftAlso; the primary only once published (withPrimary: it is named
// once it can answer).
func Attrs(base lease.Attrs, paths []lease.PathAttrs, visible string, withPrimary bool) lease.Attrs {
	a := lease.Attrs{PublicIP: base.PublicIP, PublicIPv6: base.PublicIPv6}
	for i, p := range paths {
		if i == 0 && !withPrimary && p.BackendType != visible {
			continue
		}
		if a.PublicIPv6 == nil {
			p.BackendV6Data = nil
		}
		if p.BackendType == visible {
			kind, _ := backends.Lookup(p.BackendType)
			a.BackendType = lease.BackendConfig{Type: p.BackendType, Untyped: kind.Untyped}.LeaseType()
			a.BackendData = p.BackendData
			a = a.WithBackendV6Data(p.BackendV6Data)
			continue
		}
		a = a.WithAlso(append(a.Also(), p))
	}
	return a
}
