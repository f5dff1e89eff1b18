// Package etcdstore is the lease.Store and lease.PeerStore kept in etcd v3:
// the network config at <prefix>/config, the subnet leases under
// <prefix>/subnets/ with flannel's keys, TTLs and compare-and-swap writes,
// and outside peers under <prefix>/peers/. It is the only package of weft
// that talks to etcd, so the reconciler and the backends build without the
// etcd client (lease.Store is all they see).
package etcdstore
