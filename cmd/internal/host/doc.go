// Package host is what weft keeps and finds on the host itself, beside a
// backend's data path: IP forwarding, the blackhole routes of
// -ip-blackhole-route (Keeper), and the devices flanneld leaves behind.
package host
