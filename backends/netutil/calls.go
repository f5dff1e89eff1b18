package netutil

import (
	"sync"
	"sync/atomic"
)

// Kinds of kernel call counted by Count.
const (
	CallDump    = "netlink_dump"  // a netlink table or list read
	CallGet     = "netlink_get"   // one netlink object read
	CallWrite   = "netlink_write" // one netlink object set or deleted
	CallWGRead  = "wg_read"       // a WireGuard device read (every peer)
	CallWGWrite = "wg_write"      // a WireGuard device configuration
)

var calls sync.Map // kind → *atomic.Uint64

// Count records one kernel call of kind, for weft_kernel_calls_total: how
// much work a change costs, visible without tracing the process.
func Count(kind string) {
	c, ok := calls.Load(kind)
	if !ok {
		c, _ = calls.LoadOrStore(kind, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

// Calls returns the kernel calls counted so far, by kind.
func Calls() map[string]uint64 {
	out := map[string]uint64{}
	calls.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// CountWrite counts one netlink write and passes its error through, so a
// call site stays one expression.
func CountWrite(err error) error {
	Count(CallWrite)
	return err
}
