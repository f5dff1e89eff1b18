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
	// the kernel cannot make a WireGuard link: in the VM tier a quiet
	// fallback to wireguard-go would test the wrong thing.
	ExpectKernelWireGuardEnv = "WEFT_LAB_EXPECT_KERNEL_WIREGUARD"
)

// KernelHasWireGuard reports whether this kernel can make a WireGuard link
// (built in, or a module it loads on demand). It tries in a namespace of
// its own, so the machine's links are never touched.
func KernelHasWireGuard() bool {
	ns := "wlprobe-" + runID()
	if err := exec.Command("ip", "netns", "add", ns).Run(); err != nil {
		return false
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	return exec.Command("ip", "-n", ns, "link", "add", "wgprobe", "type", "wireguard").Run() == nil
}
