// Package wireguard is the encrypted mesh backend: one WireGuard device
// (weft-wg) with a peer per other host, keys published in the leases. It
// uses kernel WireGuard when the kernel has it and runs wireguard-go inside
// weftd otherwise; either way it is configured through one wgctrl client.
//
// options.go and plan.go are pure (options, BackendData, peers → device
// configuration, which changes a delta may make on its own, which peers to
// kick); apply.go configures the device; device.go creates or adopts it.
package wireguard
