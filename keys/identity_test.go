package keys

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIdentity: an identity is made once and loaded again as it was; one
// found under another machine ID (a cloned disk) is replaced with a new
// one; a file that holds no identity is refused, not replaced; a
// signature verifies with the identity's public key only.
func TestIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), IdentityFile)
	id, state, err := LoadOrCreateIdentity(path, "machine-a")
	if err != nil || state != IdentityCreated {
		t.Fatalf("first start: %v %v", state, err)
	}
	if info, err := os.Stat(path); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("identity file: %v %v, want 0600", info, err)
	}
	again, state, err := LoadOrCreateIdentity(path, "machine-a")
	if err != nil || state != IdentityLoaded || again.Public() != id.Public() {
		t.Errorf("restart: %v %v, want the same identity loaded", state, err)
	}
	msg := []byte("weft lease v1\n10.5.1.0-24\n{}")
	if sig := id.Sign(msg); !id.Public().Verify(msg, sig) || again.Public().Verify([]byte("other"), sig) {
		t.Error("a signature does not verify with the identity's key, or verifies another message")
	}
	clone, state, err := LoadOrCreateIdentity(path, "machine-b")
	if err != nil || state != IdentityCloned || clone.Public() == id.Public() {
		t.Errorf("on another machine: %v %v, want a new identity", state, err)
	}
	if _, state, _ := LoadOrCreateIdentity(path, "machine-b"); state != IdentityLoaded {
		t.Errorf("the clone's restart: %v, want its new identity loaded", state)
	}
	// Without a machine ID, nothing is told apart.
	if _, state, _ := LoadOrCreateIdentity(path, ""); state != IdentityLoaded {
		t.Errorf("without a machine ID: %v, want loaded", state)
	}
	if err := os.WriteFile(path, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateIdentity(path, "machine-b"); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a damaged file: %v, want an error naming it", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "garbage\n" {
		t.Error("a damaged identity file was replaced")
	}
	if _, err := ParseIdentityKey(id.Public().String()); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"", "AAAA", strings.Repeat("A", 43) + "="} {
		if _, err := ParseIdentityKey(bad); err == nil {
			t.Errorf("ParseIdentityKey(%q) accepted", bad)
		}
	}
}
