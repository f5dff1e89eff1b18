package main

import (
	"runtime/debug"
)

// gcPercent is weftd's garbage collector target (GOGC) unless the
// environment sets GOGC: the heap may grow 25% over what is live before a
// collection, not Go's default 100%. weftd runs on every host beside the
// containers it serves, and its heap at the peak of a start among 50,000
// leases is mostly what is live (the lease set, the peers, the plan):
// the default let the heap reach twice that. The price is CPU: about four
// times as many collections, each short; BENCHMARKS.md measures both.
const gcPercent = 25

// tuneGC sets gcPercent when getenv has no GOGC of the operator's.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}
