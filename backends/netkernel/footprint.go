package netkernel

import "strings"

// Footprint is what a backend leaves on a host that outlives weftd: the
// devices it creates and the files it serves. Every backend's routes carry
// RouteProtocol, so they need no list. `weftctl cleanup` removes the
// footprints of all backends, whichever ran.
type Footprint struct {
	// Links are device names; a name ending in "#" matches that prefix
	// followed by decimal digits only (vxlan's weft.<VNI>), so no
	// backend's pattern takes another's device (weft.ipip).
	Links []string
	// Files are sockets and other files the backend creates.
	Files []string
}

// OwnsLink reports whether the footprint includes the device name.
func (f Footprint) OwnsLink(name string) bool {
	for _, l := range f.Links {
		if prefix, ok := strings.CutSuffix(l, "#"); ok {
			if digits, ok := strings.CutPrefix(name, prefix); ok && allDigits(digits) {
				return true
			}
		} else if l == name {
			return true
		}
	}
	return false
}

// allDigits reports whether s is one or more decimal digits.
func allDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
