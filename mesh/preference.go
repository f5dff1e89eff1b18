package mesh

// Preference is which backend this host reaches each peer by while it
// runs more than the config's Backend.Type: during a live switch it keeps
// the backends it ran before (its legacy backends) for the peers that do
// not speak the new one yet. The zero value is a host outside a switch:
// every peer is reached by the config's backend.
//
// It is the reconciler's input (Reconciler.Preference), set by the live
// switch (backends/liveswitch), never read from etcd.
type Preference struct {
	// Legacy are the backends this host runs besides the config's, the
	// oldest last: a peer that does not speak the config's backend is
	// reached by the first of these it speaks.
	Legacy []string
	// LegacyFirst prefers Legacy to the config's backend, until this host
	// has published the new backend long enough for its peers to have
	// seen it: a peer is moved to the new backend only once it can answer
	// there.
	LegacyFirst bool
}
