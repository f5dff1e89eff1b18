package liveswitch

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/netkernel/netkerneltest"
	"github.com/weftnet/weft/backends/tunnelfilter"
	"github.com/weftnet/weft/mesh"
)

// capability is one optional capability weftd looks for in a backend, and
// how to look for it through As.
type capability struct {
	name string
	find func(backends.Backend) (any, bool)
	// iface is the capability's interface type: whether a wrapper
	// implements it itself.
	iface reflect.Type
}

func capabilityOf[T any](name string) capability {
	return capability{name, func(b backends.Backend) (any, bool) { return backends.As[T](b) }, reflect.TypeFor[T]()}
}

// capabilities are every optional capability weftd finds with As.
var capabilities = []capability{
	capabilityOf[backends.DualStack]("DualStack"),
	capabilityOf[backends.KeyReloader]("KeyReloader"),
	capabilityOf[backends.DeviceStatus]("DeviceStatus"),
	capabilityOf[backends.OnDemandReporter]("OnDemandReporter"),
	capabilityOf[backends.EndpointObserver]("EndpointObserver"),
	capabilityOf[backends.MTUCarrier]("MTUCarrier"),
	capabilityOf[backends.DropCounter]("DropCounter"),
	capabilityOf[backends.TunnelDropCounter]("TunnelDropCounter"),
	capabilityOf[backends.Leaver]("Leaver"),
	capabilityOf[backends.FilterKeeper]("FilterKeeper"),
}

// intercepts are the capabilities each wrapper implements itself, because
// it does more than hand the call to one part: it adds up over its parts,
// splits a call between them, or owns the thing asked about. A wrapper
// that implements any other capability only forwards it, which As makes
// needless.
var intercepts = map[string][]string{
	"*backends.dualStack":      {"DualStack"},                         // its IPv6 half's data is its second part's BackendData
	"*backends.ipv6Only":       {"DualStack"},                         // its one part's BackendData is the lease's BackendV6Data
	"*backends.sourceFiltered": {"TunnelDropCounter", "FilterKeeper"}, // the filter is the wrapper's own
	"*liveswitch.Switching":    {},
	"*wireguard.Stack":         {"DualStack", "KeyReloader", "MTUCarrier"}, // one key over every device; the largest carried MTU
}

// TestAsThroughEveryStack builds every stack of wrappers weftd builds (on
// the in-memory kernel) and checks that each capability its parts have
// is found through it, answered by the part the table names, and that no
// wrapper implements a capability it does not intercept.
func TestAsThroughEveryStack(t *testing.T) {
	dir := t.TempDir()
	build := func(config string, filter bool) backends.Backend {
		t.Helper()
		k := netkerneltest.NewKernel()
		ext := k.AddExternal("eth0", netip.MustParsePrefix("192.168.77.1/24"), 1500)
		ext.AddrIPv6 = netip.MustParseAddr("fd77::1")
		ext.Prefixes = append(ext.Prefixes, netip.MustParsePrefix("fd77::/64"))
		cfg, err := backends.ParseConfig([]byte(config))
		if err != nil {
			t.Fatal(err)
		}
		env := backends.Env{Config: cfg, External: ext, PublicIP: ext.Addr, PublicIPv6: ext.AddrIPv6, Kernel: k, KeyFile: filepath.Join(dir, "wg.key"),
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		if filter {
			env.SourceFilter = func(tunnelfilter.Tunnel) (backends.SourceFilter, error) { return nopFilter{}, nil }
		}
		b, err := backends.New(env)
		if err != nil {
			t.Fatalf("%s: %v", config, err)
		}
		return b
	}
	const v4, dual, v6 = `"Network":"10.5.0.0/16"`, `"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48"`,
		`"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00:5::/48"`
	config := func(family, backend string) string { return fmt.Sprintf(`{%s,"Backend":%s}`, family, backend) }
	stacks := []struct {
		name    string
		backend func() backends.Backend
		// want names, by capability, the type that answers; a capability
		// left out must not be found.
		want map[string]string
	}{
		{"vxlan, source filtered", func() backends.Backend { return build(config(v4, `{"Type":"vxlan"}`), true) },
			map[string]string{"TunnelDropCounter": "*backends.sourceFiltered", "FilterKeeper": "*backends.sourceFiltered"}},
		{"vxlan dual stack, source filtered", func() backends.Backend { return build(config(dual, `{"Type":"vxlan"}`), true) },
			map[string]string{"TunnelDropCounter": "*backends.sourceFiltered", "FilterKeeper": "*backends.sourceFiltered", "DualStack": "*backends.dualStack"}},
		{"vxlan IPv6-only, source filtered", func() backends.Backend { return build(config(v6, `{"Type":"vxlan"}`), true) },
			map[string]string{"TunnelDropCounter": "*backends.sourceFiltered", "FilterKeeper": "*backends.sourceFiltered", "DualStack": "*backends.ipv6Only"}},
		{"ipip, source filtered", func() backends.Backend { return build(config(v4, `{"Type":"ipip"}`), true) },
			map[string]string{"TunnelDropCounter": "*backends.sourceFiltered", "FilterKeeper": "*backends.sourceFiltered"}},
		{"wireguard", func() backends.Backend { return build(config(v4, `{"Type":"wireguard"}`), false) }, wireguardAnswers},
		{"wireguard dual stack, a device per family", func() backends.Backend { return build(config(dual, `{"Type":"wireguard"}`), false) }, wireguardAnswers},
		{"udp", func() backends.Backend { return build(config(v4, `{"Type":"udp"}`), false) }, map[string]string{"DropCounter": "*udp.Backend"}},
		{"extension", func() backends.Backend {
			return build(config(v4, `{"Type":"extension","SubnetAddCommand":"true","SubnetRemoveCommand":"true"}`), false)
		}, map[string]string{"Leaver": "*extension.Backend"}},
		{"switch vxlan to wireguard", func() backends.Backend {
			return NewSwitching(backends.WireGuard, build(config(v4, `{"Type":"wireguard"}`), false), []string{backends.VXLAN},
				map[string]backends.Backend{backends.VXLAN: build(config(v4, `{"Type":"vxlan"}`), true)})
		}, merge(wireguardAnswers, map[string]string{"TunnelDropCounter": "*backends.sourceFiltered", "FilterKeeper": "*backends.sourceFiltered"})},
		{"switch wireguard to udp", func() backends.Backend {
			return NewSwitching(backends.UDP, build(config(v4, `{"Type":"udp"}`), false), []string{backends.WireGuard},
				map[string]backends.Backend{backends.WireGuard: build(config(v4, `{"Type":"wireguard"}`), false)})
		}, merge(wireguardAnswers, map[string]string{"DropCounter": "*udp.Backend"})},
	}
	for _, st := range stacks {
		t.Run(st.name, func(t *testing.T) {
			b := st.backend()
			for _, c := range capabilities {
				got, ok := c.find(b)
				want, wanted := st.want[c.name]
				switch {
				case ok && !wanted:
					t.Errorf("%s found (on %T), want none", c.name, got)
				case !ok && wanted:
					t.Errorf("%s not found, want it on %s", c.name, want)
				case ok && reflect.TypeOf(got).String() != want:
					t.Errorf("%s answered by %T, want %s", c.name, got, want)
				}
			}
			checkWrappersIntercept(t, b)
		})
	}
}

// wireguardAnswers is who answers on a wireguard stack.
var wireguardAnswers = map[string]string{"DualStack": "*wireguard.Stack", "KeyReloader": "*wireguard.Stack", "MTUCarrier": "*wireguard.Stack",
	"DeviceStatus": "*wireguard.Backend", "OnDemandReporter": "*wireguard.Backend", "EndpointObserver": "*wireguard.Backend"}

func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// checkWrappersIntercept walks b's stack: every wrapper in it implements
// only the capabilities it intercepts.
func checkWrappersIntercept(t *testing.T, b mesh.Applier) {
	t.Helper()
	w, ok := b.(backends.Wrapper)
	if !ok {
		return
	}
	typ := reflect.TypeOf(b).String()
	allowed, known := intercepts[typ]
	if !known {
		t.Errorf("wrapper %s is not in the table of what each wrapper intercepts", typ)
	}
	for _, c := range capabilities {
		if reflect.TypeOf(b).Implements(c.iface) && !slices.Contains(allowed, c.name) {
			t.Errorf("wrapper %s implements %s only to forward it (its parts: %s)", typ, c.name, partsOf(w))
		}
	}
	for _, inner := range w.Unwrap() {
		checkWrappersIntercept(t, inner)
	}
}

func partsOf(w backends.Wrapper) string {
	var out []string
	for _, p := range w.Unwrap() {
		out = append(out, reflect.TypeOf(p).String())
	}
	return strings.Join(out, ", ")
}

// nopFilter is a source filter that holds nothing: the stacks here are
// built, never applied.
type nopFilter struct{}

func (nopFilter) Ensure() error                         { return nil }
func (nopFilter) InPlace() bool                         { return true }
func (nopFilter) Sync([]netip.Addr) error               { return nil }
func (nopFilter) Update(_, _ []netip.Addr) error        { return nil }
func (nopFilter) Drops() (map[netip.Addr]uint64, error) { return nil, nil }
func (nopFilter) Remove() error                         { return nil }
