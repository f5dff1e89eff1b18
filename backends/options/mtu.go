package options

// DeviceMTU is a tunnel device's MTU as flannel derives it: Backend.MTU is
// the MTU of the packets on the wire (the external interface's when 0),
// and the device gets that less the encapsulation's overhead. So a config
// with "MTU":1450 gives the same device and FLANNEL_MTU on weft and
// flannel hosts of one cluster.
func DeviceMTU(backendMTU, externalMTU, overhead int) int {
	wire := backendMTU
	if wire == 0 {
		wire = externalMTU
	}
	return wire - overhead
}
