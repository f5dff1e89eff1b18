package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestWeftlabDefaultIsTheWireGuardMesh: the first thing a newcomer runs,
// `make lab` with no flags, brings up the WireGuard mesh: the host table
// names wireguard and "encrypted: yes" for every host, and every container
// reaches every other.
func TestWeftlabDefaultIsTheWireGuardMesh(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bin := filepath.Join(t.TempDir(), "weftlab")
	build := exec.Command("go", "build", "-o", bin, "./lab/cmd/weftlab")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building weftlab: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-weftd", weftdBin, "-hosts", "2", "-duration", "1ms").CombinedOutput()
	if err != nil {
		t.Fatalf("weftlab: %v\n%s", err, out)
	}
	rows := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || !strings.HasPrefix(f[0], "h") || f[0] == "HOST" {
			continue
		}
		rows++
		if f[5] != "wireguard" || f[6] != "yes" {
			t.Errorf("host row %q: want backend wireguard, encrypted yes", line)
		}
	}
	if rows != 2 || !strings.Contains(string(out), "every container reaches every other one") {
		t.Errorf("weftlab with no flags:\n%s", out)
	}
}
