package host

import (
	"regexp"
)

// flannelLink matches the devices flanneld creates and leaves behind when
// it stops: flannel.<VNI> (vxlan), flannel-v6.<VNI>, flannel-wg and
// flannel-wg-v6 (wireguard), flannel0 (udp), flannel.ipip (ipip).
var flannelLink = regexp.MustCompile(`^(flannel\.[0-9]+|flannel-v6\.[0-9]+|` +
	`flannel-wg|flannel-wg-v6|flannel0|flannel\.ipip)$`)

// IsFlannelLink reports whether a device is one flanneld leaves behind.
func IsFlannelLink(name string) bool { return flannelLink.MatchString(name) }

// FlannelLinks returns the names, among names, of devices flanneld left.
func FlannelLinks(names []string) []string {
	var out []string
	for _, n := range names {
		if IsFlannelLink(n) {
			out = append(out, n)
		}
	}
	return out
}
