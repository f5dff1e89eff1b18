// Package hostgw is the host-gw backend: no device, no encapsulation; each
// peer's subnet is routed via the peer's PublicIP on the external link. It
// needs every host on one L2 segment.
//
// plan.go is pure (peers → routes); apply.go programs them through the
// netkernel.Kernel seam.
package hostgw
