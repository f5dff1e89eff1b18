package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// StartWireGuardGo runs the wireguard-go binary in namespace ns with a
// device called name, and waits for its UAPI socket, so `wg set` can
// configure it. The caller kills the process; its device goes with it.
func StartWireGuardGo(binary, ns, name string) (*exec.Cmd, error) {
	proc := exec.Command("ip", "netns", "exec", ns, binary, "-f", name)
	proc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := proc.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	sock := "/var/run/wireguard/" + name + ".sock"
	if err := waitUntil(context.Background(), 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }); err != nil {
		proc.Process.Kill()
		proc.Wait()
		return nil, fmt.Errorf("%s did not open %s", binary, sock)
	}
	return proc, nil
}
