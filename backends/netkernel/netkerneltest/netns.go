// Package netkerneltest is the test side of the netkernel seam: Kernel, an
// in-memory kernel for the pure tier that prints its state as ip and
// bridge do, and for host-tier tests a private, throw-away network
// namespace with a unique name, removed when the test ends even if it fails.
package netkerneltest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftnet/weft/backends/netkernel"
)

// Netns is a named network namespace owned by one test.
type Netns struct {
	Name   string
	Handle *netlink.Handle
	ns     netns.NsHandle
}

// RequireRoot skips the test unless it runs as root (host and cluster tiers).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
}

// UniqueName returns prefix plus random hex, short enough for a link name.
func UniqueName(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewNetns creates a namespace, brings its loopback up and registers its
// removal with t.Cleanup.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	RequireRoot(t)
	name := UniqueName("wt-")
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	n := &Netns{Name: name, Handle: h, ns: ns}
	n.Run(t, "ip", "link", "set", "lo", "up")
	return n
}

// Kernel is the netkernel.Kernel of the namespace, closed when the test
// ends.
func (n *Netns) Kernel(t testing.TB) *netkernel.Netlink {
	t.Helper()
	k, err := netkernel.NewNetlinkAt(n.ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	return k
}

// NewLinkedNetns makes two namespaces joined by a veth pair, ext0 in the
// first with 192.168.77.1/24 and ext0p in the second with 192.168.77.2/24,
// both up: a host and a neighbour on its underlay.
func NewLinkedNetns(t testing.TB) (host, other *Netns) {
	t.Helper()
	host, other = NewNetns(t), NewNetns(t)
	host.Run(t, "ip", "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p", "netns", other.Name)
	host.Run(t, "ip", "addr", "add", "192.168.77.1/24", "dev", "ext0")
	host.Run(t, "ip", "link", "set", "ext0", "up")
	other.Run(t, "ip", "addr", "add", "192.168.77.2/24", "dev", "ext0p")
	other.Run(t, "ip", "link", "set", "ext0p", "up")
	return host, other
}

// Run runs a command inside the namespace and fails the test if it fails.
func (n *Netns) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return out
}

// Try runs a command inside the namespace and returns its combined output.
func (n *Netns) Try(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name}, args...)...).CombinedOutput()
	return string(out), err
}

// Enter moves the calling goroutine's OS thread into the namespace until
// the test ends, for code that uses the package-level netlink calls or
// opens devices and sockets where it runs. The test must stay on this
// goroutine (no t.Parallel, no subtests that run elsewhere).
func (n *Netns) Enter(t testing.TB) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	if err := netns.Set(n.ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Back to where the thread came from; a thread that cannot go back
		// stays locked and dies with the goroutine instead of being reused.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	})
}
