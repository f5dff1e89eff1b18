package main

import (
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
)

// TestCleanupFindsEveryBackendsDevices: cleanup takes the devices to remove
// from the backends' own footprints, and only those.
func TestCleanupFindsEveryBackendsDevices(t *testing.T) {
	footprints := backends.Footprints()
	for name, want := range map[string]string{
		"weft0": "udp", "weft-wg": "wireguard", "weft-wg-v6": "wireguard", "weft.1": "vxlan", "weft.4096": "vxlan", "weft-v6.1": "vxlan",
		"weft.ipip": "ipip", "weft.": "", "weft.1x": "", "weft-v6.ipip": "",
		"eth0": "", "flannel.1": "", "weftx": "", "cbr0": "", "docker0": "",
	} {
		if got := ownedBy(footprints, name); got != want {
			t.Errorf("device %s: owned by %q, want %q", name, got, want)
		}
	}
	if f := footprints["wireguard"]; strings.Join(f.Files, " ") != "/var/run/wireguard/weft-wg.sock /var/run/wireguard/weft-wg-v6.sock" {
		t.Errorf("wireguard's files: %v", f.Files)
	}
}
