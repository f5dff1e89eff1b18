package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestArchiveUnpacks writes an initramfs-style archive and has busybox's
// cpio (the same code as the kernel's format, newc) unpack it.
func TestArchiveUnpacks(t *testing.T) {
	a := newArchive()
	a.add("init", modeFile|0o755, []byte("#!/bin/sh\necho hi\n"))
	a.add("lib/modules/6.1.0-1-amd64/kernel/fs/9p/9p.ko", modeFile|0o644, []byte("odd length!"))
	a.add("sbin/modprobe", modeSymlink|0o777, []byte("/bin/busybox"))
	a.add("tmp", modeDir|0o755, nil)
	var gz bytes.Buffer
	if err := a.writeTo(&gz); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "gunzip | busybox cpio -i -d 2>&1")
	cmd.Dir, cmd.Stdin = dir, &gz
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio: %v\n%s", err, out)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "lib/modules/6.1.0-1-amd64/kernel/fs/9p/9p.ko")); err != nil || string(data) != "odd length!" {
		t.Errorf("module file: %q %v", data, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("init: %v %v", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "sbin/modprobe")); err != nil || target != "/bin/busybox" {
		t.Errorf("symlink: %q %v", target, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "tmp")); err != nil || !fi.IsDir() {
		t.Errorf("tmp: %v %v", fi, err)
	}
}

func TestModuleClosure(t *testing.T) {
	k := Kernel{Version: "6.1.0-1-amd64", Root: t.TempDir()}
	os.MkdirAll(k.ModulesDir(), 0o755)
	dep := "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n" +
		"kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n" +
		"kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n" +
		"kernel/drivers/virtio/virtio_ring.ko:\n"
	os.WriteFile(filepath.Join(k.ModulesDir(), "modules.dep"), []byte(dep), 0o644)
	got, err := k.ModuleClosure("9pnet_virtio", "9p")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/virtio/virtio_ring.ko", "kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko",
		"kernel/fs/netfs/netfs.ko", "kernel/fs/9p/9p.ko"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("closure %v, want %v", got, want)
	}
	if _, err := k.ModuleClosure("wireguard"); err == nil || !strings.Contains(err.Error(), "has no module wireguard") {
		t.Errorf("missing module: %v", err)
	}
}

func TestVerdict(t *testing.T) {
	log := "=== RUN   TestA\n--- PASS: TestA (1.50s)\n    --- PASS: TestA/sub (0.25s)\n--- SKIP: TestB (0.00s)\n"
	for _, c := range []struct {
		name, log, rc, want string
	}{
		{"all pass", "--- PASS: TestA (1.50s)\n", "0", ""},
		{"a skip fails", log, "0", "SKIP TestB"},
		{"a failure", "--- FAIL: TestA (2.00s)\n", "1", "FAIL TestA"},
		{"status without a test line", "panic: boom\n", "2", "exited with status 2"},
		{"nothing ran", "", "0", "no test ran"},
		{"no status: the VM stopped early", "--- PASS: TestA (1.50s)\n", "", "wrote no exit status"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "test.log"), []byte(c.log), 0o644)
			if c.rc != "" {
				os.WriteFile(filepath.Join(dir, "rc"), []byte(c.rc+"\n"), 0o644)
			}
			_, err := Verdict(dir)
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("Verdict = %v, want %q", err, c.want)
			}
		})
	}
	got := ParseResults([]byte(log))
	want := []Result{{"TestA", "PASS", 1500 * time.Millisecond}, {"TestA/sub", "PASS", 250 * time.Millisecond}, {"TestB", "SKIP", 0}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseResults = %v, want %v", got, want)
	}
}

// TestScript: each pattern is its own invocation, quoted, and the worst
// status is what the VM reports.
func TestScript(t *testing.T) {
	s := Run{Repo: "/work/weft", TestBinary: "/c/lab.test", Patterns: []string{"^TestA$", "^TestB$/^it's$"},
		Env: []string{"X=1"}, TestTimeout: time.Minute}.Script()
	for _, want := range []string{"export 'X=1'", "cd '/work/weft/lab'", `-test.run '^TestA$'`, `-test.run '^TestB$/^it'\''s$'`,
		"-test.timeout=1m0s", "echo $rc > /run/weft-vm/rc"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %s:\n%s", want, s)
		}
	}
	if strings.Count(s, "PIPESTATUS") != 2 {
		t.Errorf("want one status check per pattern:\n%s", s)
	}
}
