package keys

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "wg.key")
	key, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate = %v, %v", created, err)
	}
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", info.Mode(), err)
	}
	again, created, err := LoadOrCreate(path)
	if err != nil || created || again != key {
		t.Fatalf("second LoadOrCreate = %v %v; want the same key, not created", created, err)
	}
	if key.Public() == key || key.Public() == (Key{}) {
		t.Fatal("public key not derived")
	}
	// The private key and the public key are distinct strings of 44 chars.
	if len(key.String()) != 44 || len(key.Public().String()) != 44 {
		t.Fatalf("key strings %q %q", key, key.Public())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

func TestLoadRefuses(t *testing.T) {
	good, _ := Generate()
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"world readable", good.String() + "\n", 0o644, "mode 0644, readable beyond its owner; run `chmod 600"},
		{"group readable", good.String() + "\n", 0o640, "mode 0640"},
		{"empty", "", 0o600, "decodes to 0 bytes"},
		{"corrupt", "!!!not base64!!!", 0o600, "not base64"},
		{"wrong length", "AAAA", 0o600, "decodes to 3 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "wg.key")
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tt.mode) // umask may have narrowed it
			_, _, err := LoadOrCreate(path)
			if !errors.Is(err, ErrBadKeyFile) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadOrCreate = %v; want ErrBadKeyFile containing %q", err, tt.want)
			}
			// Never silently replaced.
			if data, _ := os.ReadFile(path); string(data) != tt.content {
				t.Fatal("refused key file was changed")
			}
		})
	}
}

func TestRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "wg.key")
	old, _, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := Rotate(path)
	if err != nil || fresh == old {
		t.Fatalf("Rotate = %v, %v", fresh, err)
	}
	loaded, err := Load(path)
	if err != nil || loaded != fresh {
		t.Fatalf("after rotation Load = %v, %v", loaded, err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Fatalf("rotated file mode %v", info.Mode())
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file = %v", err)
	}
}

func TestParseKey(t *testing.T) {
	k, _ := Generate()
	back, err := ParseKey(k.String())
	if err != nil || back != k {
		t.Fatal("round trip failed")
	}
}

func FuzzParseKey(f *testing.F) {
	f.Add("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if k, err := ParseKey(s); err == nil && k.String() != s {
			// base64 accepts only canonical padding here; a mismatch means
			// two texts for one key, which would make key comparison lie.
			if _, err2 := ParseKey(k.String()); err2 != nil {
				t.Fatalf("re-encoding %q fails", s)
			}
		}
	})
}

// TestLoadRefusesFilesOthersControl: a symlink, a file of another user and
// a directory others can write to are refused, each saying how to fix it.
func TestLoadRefusesFilesOthersControl(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.key")
	if _, _, err := LoadOrCreate(real); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "wg.key")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(link); !errors.Is(err, ErrBadKeyFile) || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("symlink: %v", err)
	}
	open := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if _, _, err := LoadOrCreate(filepath.Join(open, "wg.key")); !errors.Is(err, ErrBadKeyFile) || !strings.Contains(err.Error(), "chmod go-w") {
		t.Errorf("world-writable directory: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(real, 1234, 1234); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(real); !errors.Is(err, ErrBadKeyFile) || !strings.Contains(err.Error(), "belongs to uid 1234") {
			t.Errorf("another user's file: %v", err)
		}
	}
}

// TestHostID: an ID is made once and read back the same; a file that
// holds no valid ID is refused, not replaced; the text form is parsed
// strictly.
func TestHostID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "weft", HostIDFile)
	id, created, err := LoadOrCreateHostID(path)
	if err != nil || !created || id.IsZero() {
		t.Fatalf("first start: %v %v %v", id, created, err)
	}
	again, created, err := LoadOrCreateHostID(path)
	if err != nil || created || again != id {
		t.Fatalf("second start: %v %v %v, want %v read back", again, created, err, id)
	}
	if err := os.WriteFile(path, []byte("not an id\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateHostID(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a corrupt host ID file: %v, want an error naming it", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "not an id\n" {
		t.Errorf("the corrupt file was replaced: %q", data)
	}
	for _, bad := range []string{"", "00000000000000000000000000000000", strings.ToUpper(id.String()), id.String() + "0", "g" + id.String()[1:]} {
		if _, err := ParseHostID(bad); err == nil {
			t.Errorf("ParseHostID(%q) accepted it", bad)
		}
	}
	if got, err := ParseHostID(id.String()); err != nil || got != id {
		t.Errorf("ParseHostID(%s) = %v %v", id, got, err)
	}
}
