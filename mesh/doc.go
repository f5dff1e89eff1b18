// Package mesh turns the cluster's lease set into the state this host's data
// path should have (Compute, pure) and keeps the data path there
// (Reconciler, a level-triggered reconcile loop). It knows nothing of
// netlink or etcd: backends apply the Desired state, package lease talks to
// the store.
//
// # Life of a lease change
//
// One host's lease changes in etcd; on every other host:
//
//  1. lease/etcdstore: the store's Watch, from the revision of the last List,
//     delivers the changed record (a compacted revision makes the Watcher
//     list again).
//  2. lease/watch.go: the Watcher decodes it (a bad value is kept as a raw
//     Record, skipped with one warning), updates its lease set, logs the key
//     in its change log (lease/changelog.go) and marks Changed.
//  3. mesh/reconciler.go: the Reconciler wakes (bursts coalesce in a
//     1-buffered channel), asks ChangesSince for the changed keys and, when
//     the backend is a DeltaApplier, turns them into a Delta against the
//     model of what it last applied (mesh/delta.go); the start, a resync
//     tick, a relist, a change of this host's own lease or a failed apply
//     make a whole apply of Compute's result instead (mesh/compute.go).
//     The Reconciler's Preference (mesh/preference.go) picks each peer's
//     path while this host runs more than one backend (a live switch).
//  4. The wrappers a change passes through on its way to the backend, outside
//     in; each intercepts only what it names (backends.As finds the rest):
//     - backends/liveswitch/switching.go, during a live switch: splits the
//     Delta by path, adds a moving peer to its new backend before its old
//     one lets go; any backend that cannot take its part makes it whole.
//     - backends/sourcefilter.go, on vxlan and ipip: adds the new peers'
//     addresses to the nftables tunnel filter (backends/tunnelfilter)
//     before the backend programs them.
//     - backends/dualstack.go: the IPv4 half to one instance, the IPv6
//     half (Delta.IPv6Half) to the other; an IPv6-only network's one.
//     - backends/wireguard/stack.go: a device per family, each its half.
//  5. backends/<type>/plan.go: the backend plans the peers of the Delta (or
//     the whole Desired state) as plain data: routes, neighbours, FDB
//     entries, WireGuard peers; bad peers are skipped and named.
//  6. backends/<type>/apply.go: the backend changes only the difference,
//     through the netkernel.Kernel seam (netlink, counted) or wireguard.Control
//     (wgctrl), adding
//     before deleting and returning every error; ErrWholeApply asks for a
//     whole apply when a delta cannot be correct on its own.
package mesh
