// Package alloc is flannel's alloc backend: a host leases a subnet and
// writes the subnet file, and nothing else. Routing between hosts is
// someone else's (BGP, a cloud route table); weft keeps no peer state and
// touches no device, route or rule of the data path.
//
// apply.go is the whole backend: every step of its life is a no-op but
// the MTU it reports.
package alloc
