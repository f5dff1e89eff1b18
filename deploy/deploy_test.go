// Package deploy holds weft's deployment files (systemd units, the compose
// service, example configs); these tests check the files with
// the tools that will read them.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
)

// TestSystemdUnitsVerify runs systemd-analyze verify on weftd.service and
// on a docker.service carrying weft's drop-in, with the unit's binaries
// pointing at freshly built ones (verify checks that they exist).
func TestSystemdUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	for _, pkg := range []string{"weftd", "weftctl"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, pkg), "./cmd/"+pkg)
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", pkg, err, out)
		}
	}
	unit, err := os.ReadFile("systemd/weftd.service")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("weftd.service", strings.ReplaceAll(string(unit), "/usr/local/bin/", bin+"/"))
	dropIn, _ := os.ReadFile("systemd/docker.service.d/weft.conf")
	write("docker.service.d/weft.conf", strings.ReplaceAll(string(dropIn), "ExecStart=dockerd", "ExecStart=/bin/true"))
	write("docker.service", "[Unit]\nDescription=stand-in for docker\n[Service]\nExecStart=/bin/true\n")
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "weftd.service"), filepath.Join(dir, "docker.service"))
	out, err := cmd.CombinedOutput()
	// Units this machine lacks (etcd, containerd) are not ours to judge.
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && (strings.Contains(line, "weftd.service") || strings.Contains(line, "weft.conf")) {
			problems = append(problems, line)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if !strings.Contains(string(unit), "Type=notify") || !strings.Contains(string(unit), "Before=docker.service") {
		t.Error("weftd.service must be Type=notify and ordered before docker")
	}
}

// unitDirectives returns the values of every line of a unit file whose key
// is one of keys, split on spaces, as systemd reads dependency lists.
func unitDirectives(t *testing.T, path string, keys ...string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, line := range strings.Split(string(data), "\n") {
		key, value, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && slices.Contains(keys, key) {
			out[key] = append(out[key], strings.Fields(value)...)
		}
	}
	return out
}

// TestRestartingWeftdLeavesDocker: nothing in the shipped units makes
// systemd stop or restart docker when weftd is stopped or restarted
// (Requires=, BindsTo=, PartOf=, Requisite= on docker's side;
// PropagatesStopTo=, RequiredBy=, BoundBy= on weftd's), while docker still
// starts after weftd.
func TestRestartingWeftdLeavesDocker(t *testing.T) {
	for key, units := range unitDirectives(t, "systemd/docker.service.d/weft.conf", "Requires", "BindsTo", "PartOf", "Requisite") {
		if slices.Contains(units, "weftd.service") {
			t.Errorf("docker drop-in: %s=weftd.service makes `systemctl restart weftd` restart docker and its containers", key)
		}
	}
	for key, units := range unitDirectives(t, "systemd/weftd.service", "PropagatesStopTo", "RequiredBy", "BoundBy") {
		if slices.Contains(units, "docker.service") {
			t.Errorf("weftd.service: %s=docker.service ties docker's life to weftd's", key)
		}
	}
	order := unitDirectives(t, "systemd/docker.service.d/weft.conf", "After", "Wants")
	if !slices.Contains(order["After"], "weftd.service") || !slices.Contains(order["Wants"], "weftd.service") {
		t.Errorf("docker drop-in must start docker after weftd (After= and Wants=weftd.service): %v", order)
	}
}

// TestUnitPathsMayBeMissing: every ReadWritePaths= entry of weftd.service
// that systemd does not create itself (RuntimeDirectory=, StateDirectory=)
// and the kernel does not provide (/proc, /sys) carries the "-" prefix: a
// path missing at boot (iptables-nft never creates /run/xtables.lock)
// otherwise fails the unit with 226/NAMESPACE.
func TestUnitPathsMayBeMissing(t *testing.T) {
	d := unitDirectives(t, "systemd/weftd.service", "ReadWritePaths", "RuntimeDirectory", "StateDirectory")
	created := map[string]bool{}
	for _, dir := range d["RuntimeDirectory"] {
		created["/run/"+dir] = true
	}
	for _, dir := range d["StateDirectory"] {
		created["/var/lib/"+dir] = true
	}
	for _, p := range d["ReadWritePaths"] {
		if strings.HasPrefix(p, "-") || created[p] || strings.HasPrefix(p, "/proc/") || strings.HasPrefix(p, "/sys/") {
			continue
		}
		t.Errorf("ReadWritePaths=%s may be missing at boot and then fails the unit; write it -%s", p, p)
	}
}

// TestComposeConfig has Debian's docker-compose parse and validate the file.
func TestComposeConfig(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose not installed (make test installs it)")
	}
	cmd := exec.Command("docker-compose", "-f", "compose/docker-compose.yml", "config")
	cmd.Env = append(os.Environ(), "WEFTD_ETCD_ENDPOINTS=http://10.0.0.1:2379")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	for _, want := range []string{"network_mode: host", "NET_ADMIN", "/dev/net/tun", "/var/lib/weft", "http://10.0.0.1:2379",
		"cap_drop:\n    - ALL", "no-new-privileges:true", "read_only: true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("compose config lacks %q:\n%s", want, out)
		}
	}
}

// TestExampleConfigs: every example passes the checks weftd applies.
func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob("config/*.json")
	if len(files) < 4 {
		t.Fatalf("expected an example per backend, found %v", files)
	}
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		cfg, err := backends.ParseConfig(raw)
		if err == nil {
			err = backends.ValidateOptions(cfg)
		}
		if err != nil {
			t.Errorf("%s: %v", f, err)
		}
		var v map[string]any
		if json.Unmarshal(raw, &v) != nil {
			t.Errorf("%s is not JSON", f)
		}
	}
}
