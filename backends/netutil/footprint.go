package netutil

import "strings"

// Footprint is what a backend leaves on a host that outlives weftd: the
// devices it creates and the files it serves. Every backend's routes carry
// RouteProtocol, so they need no list. `weftctl cleanup` removes the
// footprints of all backends, whichever ran.
type Footprint struct {
	// Links are device names; a name ending in "*" matches by prefix
	// (vxlan's weft.<VNI>).
	Links []string
	// Files are sockets and other files the backend creates.
	Files []string
}

// OwnsLink reports whether the footprint includes the device name.
func (f Footprint) OwnsLink(name string) bool {
	for _, l := range f.Links {
		if prefix, ok := strings.CutSuffix(l, "*"); ok && strings.HasPrefix(name, prefix) || l == name {
			return true
		}
	}
	return false
}
