// Package udp is the udp backend: a TUN device weft0 whose IP packets travel
// as whole UDP payloads (flannel's wire format) between hosts.
//
// plan.go is pure (options, the peer table and the check every received
// datagram must pass); apply.go keeps the TUN and wires it to the mesh;
// dataplane.go moves packets in batches.
package udp
