// Package liveswitch is the live switch of Backend.Type: when the network
// config asks for another backend, weftd runs again in process without
// touching the data path, and the new run keeps the backends the host ran
// before (its legacy backends) beside the new one for the peers that do
// not speak the new one yet: hosts not yet switched, flannel hosts.
//
// The lease keeps the BackendType those peers read (flannel's hosts read
// nothing else) and names the other backends in WeftAlso (Attrs). A peer
// that speaks the new backend is prepared there at once (standby) and
// moved to it once this host has published it for Settle, so both ends of
// every pair can answer before either sends; a legacy backend no peer
// needs for Settle is retired (Keeper). The same runs at a restart in the
// middle of a switch: the lease says what the peers were told, a state
// file beside the subnet file the legacy backends' options (State).
//
// The parts, in the order a switch meets them:
//   - Plan: what a run keeps from before (NewPlan), and the path
//     preference it starts with (Plan.Preference, mesh's input).
//   - HandOver: the backends one run hands the next running, owned by
//     weftd's main loop; Build takes them back or builds anew.
//   - Switching: the data path of a host in a switch, one backend per
//     Type, each peer carried by the backend of its path.
//   - Keeper: publishes, moves the peers, retires the legacy backends.
package liveswitch
