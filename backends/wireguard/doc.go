// Package wireguard is the encrypted mesh backend: one WireGuard device
// (weft-wg) with a peer per other host, keys published in the leases. It
// uses kernel WireGuard when the kernel has it and runs wireguard-go inside
// weftd otherwise; either way it is configured through the Control seam
// (wgctrl in weftd, wireguardtest's fake in the pure tier).
//
// options.go and plan.go are pure (options, BackendData, peers → wanted
// peers, which changes a delta may make on its own, which peers to kick);
// deviceplan.go is the pure half of a whole apply (what to write given
// what the device holds); apply.go is the thin half that reads and writes
// the device; device.go creates or adopts it; stack.go runs a device per
// address family where the network needs two; ondemand.go and
// probation.go keep only the peers in use on a wireguard-go device.
package wireguard
