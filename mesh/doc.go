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
//  4. backends/<type>/plan.go: the backend plans the peers of the Delta (or
//     the whole Desired state) as plain data: routes, neighbours, FDB
//     entries, WireGuard peers; bad peers are skipped and named.
//  5. backends/<type>/apply.go: the backend changes only the difference,
//     through the netkernel.Kernel seam (netlink, counted) or wireguard.Control
//     (wgctrl), adding
//     before deleting and returning every error; ErrWholeApply asks for a
//     whole apply when a delta cannot be correct on its own.
package mesh
