package keys

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSealed: a sealed record opens with its fields and signer; a changed
// byte, a record of another kind, a field that is not "name value" and a
// missing signature are refused. A CA key file is never overwritten, and
// the trusted-keys file names its bad line.
func TestSealed(t *testing.T) {
	dir := t.TempDir()
	ca, err := CreateCA(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCA(filepath.Join(dir, "ca.key")); err == nil {
		t.Error("a second CreateCA overwrote the CA key")
	}
	loaded, err := LoadCA(filepath.Join(dir, "ca.key"))
	if err != nil || loaded.Public() != ca.Public() {
		t.Fatalf("LoadCA: %v", err)
	}
	text, err := Seal(ca, "member", []string{"host abc", "subnet 10.5.1.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := OpenSealed([]byte(text), "member")
	if err != nil || o.Signer != ca.Public() {
		t.Fatalf("open: %v", err)
	}
	if v, err := o.One("subnet"); err != nil || v != "10.5.1.0/24" {
		t.Errorf("subnet: %q %v", v, err)
	}
	for name, bad := range map[string]string{
		"a changed byte":   strings.Replace(text, "10.5.1.0", "10.5.2.0", 1),
		"another kind":     strings.Replace(text, "weft member v1", "weft config v1", 1),
		"no signature":     text[:strings.Index(text, "signature ")],
		"a field appended": text + "subnet 10.5.9.0/24\n",
	} {
		if _, err := OpenSealed([]byte(bad), "member"); err == nil {
			t.Errorf("%s: opened", name)
		}
	}
	if _, err := Seal(ca, "member", []string{"host abc\nsubnet 10.5.9.0/24"}); err == nil {
		t.Error("a field with a newline was sealed")
	}
	trusted := filepath.Join(dir, "ca.pub")
	os.WriteFile(trusted, []byte("# the CA\n"+ca.Public().String()+"\nnot-a-key\n"), 0o644)
	if _, err := ReadTrusted(trusted); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("a bad trusted key: %v, want its line named", err)
	}
}
