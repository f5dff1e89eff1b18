package lab

import (
	"os/exec"
)

// Environment the VM tier (lab/cmd/weftvm) sets for the cluster tests it
// runs inside a Debian kernel.
const (
	// PrebuiltEnv names a directory holding weftd, weftctl and
	// wireguard-go built beforehand: the tests use them instead of
	// building their own.
	PrebuiltEnv = "WEFT_LAB_BIN"
	// ExpectKernelWireGuardEnv, when set, makes the tests fail at once if
	// the kernel cannot make a WireGuard link (or an ipip one): in the VM
	// tier a quiet fallback to wireguard-go, or a skipped ipip test, would
	// test the wrong thing.
	ExpectKernelWireGuardEnv = "WEFT_LAB_EXPECT_KERNEL_WIREGUARD"
)

// KernelHasWireGuard reports whether this kernel can make a WireGuard link
// (built in, or a module it loads on demand). It tries in a namespace of
// its own, so the machine's links are never touched.
func KernelHasWireGuard() bool { return kernelMakes("wireguard") }

// KernelHasIPIP reports whether this kernel can make an ipip link (this
// machine's cannot; Debian's, in the VM tier, can).
// The probe has a local address: one with neither local nor remote would
// collide with the namespace's fallback device tunl0.
func KernelHasIPIP() bool { return kernelMakes("ipip", "local", "192.0.2.1") }

// kernelMakes tries to make a link of kind in a namespace of its own, so
// the machine's links are never touched.
func kernelMakes(kind string, args ...string) bool {
	ns := "wlprobe-" + runID()
	if err := exec.Command("ip", "netns", "add", ns).Run(); err != nil {
		return false
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	return exec.Command("ip", append([]string{"-n", ns, "link", "add", "probe0", "type", kind}, args...)...).Run() == nil
}
