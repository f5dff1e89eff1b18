// Package vxlan is the vxlan backend, interoperable with flannel's: a
// kernel VXLAN device weft.<VNI> whose address is the subnet's network
// address (/32), and per peer a route via the peer's VTEP address, a
// permanent neighbour entry and an FDB entry to its PublicIP.
//
// plan.go is pure (options, BackendData, peers → kernel state); apply.go
// programs it through the netkernel.Kernel seam.
package vxlan
