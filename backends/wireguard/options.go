package wireguard

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/weftnet/weft/backends/options"
	"github.com/weftnet/weft/keys"
)

// DeviceName is the WireGuard interface weft creates.
const DeviceName = "weft-wg"

// Implementation choices for Options.Implementation.
const (
	ImplAuto      = "auto"
	ImplKernel    = "kernel"
	ImplUserspace = "userspace"
)

// Overhead of WireGuard over IPv6 (40 IP + 8 UDP + 32 WireGuard); the MTU
// default subtracts it so the tunnel works on either underlay family.
const Overhead = 80

// Options are the "Backend" keys of a wireguard network config.
type Options struct {
	ListenPort int
	// PSK is an optional pre-shared key every peer uses.
	PSK *keys.Key
	// PersistentKeepalive is 0 (off) or the interval between keepalives.
	PersistentKeepalive time.Duration
	// MTU is the MTU of the packets on the wire, as in flannel: the device
	// gets MTU − Overhead (0: the external interface's MTU − Overhead).
	MTU            int
	Implementation string
	// ImplementationFrom names where Implementation came from, for log
	// lines and errors: the config key, or weftd's flag overriding it.
	ImplementationFrom string
}

// ValidImplementation reports whether impl is one of auto, kernel, userspace.
func ValidImplementation(impl string) bool {
	return impl == ImplAuto || impl == ImplKernel || impl == ImplUserspace
}

// ParseOptions reads and checks the Backend object. Every error names the
// option at fault.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var in struct {
		ListenPort                  *int    `json:"ListenPort"`
		PSK                         string  `json:"PSK"`
		PersistentKeepaliveInterval float64 `json:"PersistentKeepaliveInterval"`
		MTU                         int     `json:"MTU"`
		Implementation              string  `json:"Implementation"`
	}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return Options{}, fmt.Errorf("wireguard Backend options: %w", err)
		}
	}
	o := Options{MTU: in.MTU, Implementation: in.Implementation, ImplementationFrom: `key "Backend.Implementation"`}
	var err error
	if o.ListenPort, err = options.Port("ListenPort", in.ListenPort, 51820); err != nil {
		return o, err
	}
	if in.PSK != "" {
		psk, err := keys.ParseKey(in.PSK)
		if err != nil {
			return o, fmt.Errorf(`key "Backend.PSK": %v; make one with "wg genpsk"`, err)
		}
		o.PSK = &psk
	}
	if in.PersistentKeepaliveInterval < 0 || in.PersistentKeepaliveInterval > 65535 {
		return o, fmt.Errorf(`key "Backend.PersistentKeepaliveInterval": %v is not between 0 and 65535 seconds`, in.PersistentKeepaliveInterval)
	}
	o.PersistentKeepalive = time.Duration(in.PersistentKeepaliveInterval) * time.Second
	if err := options.MTU(o.MTU); err != nil {
		return o, err
	}
	if o.Implementation == "" {
		o.Implementation = ImplAuto
	}
	if !ValidImplementation(o.Implementation) {
		return o, fmt.Errorf(`key "Backend.Implementation": %q is not one of auto, kernel, userspace`, o.Implementation)
	}
	return o, nil
}

// BackendData is what a wireguard lease publishes, as flannel does.
type BackendData struct {
	PublicKey string `json:"PublicKey"`
	Port      int    `json:"Port"`
}

// EncodeBackendData renders the lease's BackendData.
func EncodeBackendData(pub keys.Key, port int) json.RawMessage {
	data, _ := json.Marshal(BackendData{PublicKey: pub.String(), Port: port})
	return data
}
