package mesh

import (
	"errors"
	"fmt"
)

// PeerSkipped is a backend's reason to leave one peer out of the data path
// (BackendData it cannot use, a duplicate key or VTEP MAC, a peer off the
// link). It is a signal, not a failure: the other peers are programmed,
// the Reconciler logs each skipped peer once and stays ready, and a new
// host is not kept from READY by one broken lease.
type PeerSkipped struct {
	Key    string
	Reason string
}

// Error says which peer was skipped and why.
func (e *PeerSkipped) Error() string { return "peer " + e.Key + ": " + e.Reason }

// SkipPeer returns a *PeerSkipped for lease key with a formatted reason.
func SkipPeer(key, format string, args ...any) error {
	return &PeerSkipped{Key: key, Reason: fmt.Sprintf(format, args...)}
}

// splitSkipped separates the skipped peers in an apply's error (a join of
// errors, possibly nested) from the failures, which it joins again.
func splitSkipped(err error) (skipped []*PeerSkipped, failures error) {
	var rest []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if s, ok := e.(*PeerSkipped); ok {
			skipped = append(skipped, s)
			return
		}
		if joined, ok := e.(interface{ Unwrap() []error }); ok {
			for _, inner := range joined.Unwrap() {
				walk(inner)
			}
			return
		}
		rest = append(rest, e)
	}
	walk(err)
	return skipped, errors.Join(rest...)
}
