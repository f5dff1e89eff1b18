package keys

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// Sealed records. What a membership CA (an offline key that never touches
// etcd) signs — a host's certificate, the revocation list, the network
// config's seal, an outside peer — is a short text: a first line naming
// its kind ("weft <kind> v1"), "ca <key>" naming the signer, the record's
// own "name value" lines, and last "signature <base64>" over every byte
// before it. A reader parses the lines into typed values and checks the
// signer against the CA keys it trusts from a local file; nothing is
// taken from the text as it is.

// maxSealed bounds a sealed record; a certificate is about 400 bytes, a
// revocation list grows by one line per revoked certificate.
const maxSealed = 64 << 10

// Seal signs a record of kind made of fields (each "name value", no
// newline) with ca.
func Seal(ca Identity, kind string, fields []string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "weft %s v1\nca %s\n", kind, ca.Public())
	for _, f := range fields {
		if strings.ContainsAny(f, "\n\r") || !strings.Contains(f, " ") {
			return "", fmt.Errorf("sealed field %q is not one \"name value\" line", f)
		}
		b.WriteString(f)
		b.WriteByte('\n')
	}
	body := b.String()
	return body + "signature " + base64.StdEncoding.EncodeToString(ca.Sign([]byte(body))) + "\n", nil
}

// Opened is a sealed record whose signature verified with the key it
// names: Signer still has to be a trusted CA's.
type Opened struct {
	Signer IdentityKey
	// Fields are the record's lines between "ca" and "signature", in
	// order, each split at its first space.
	Fields [][2]string
}

// OpenSealed checks text is a sealed record of kind whose signature
// verifies with the key it names, and returns its fields.
func OpenSealed(text []byte, kind string) (Opened, error) {
	if len(text) > maxSealed {
		return Opened{}, fmt.Errorf("a sealed %s is %d bytes, more than %d", kind, len(text), maxSealed)
	}
	if !bytes.HasSuffix(text, []byte("\n")) {
		return Opened{}, fmt.Errorf("a sealed %s ends with a newline", kind)
	}
	last := bytes.LastIndex(text[:len(text)-1], []byte("\n"))
	if last < 0 {
		return Opened{}, fmt.Errorf("not a sealed %s (\"weft %s v1\" ... \"signature <base64>\")", kind, kind)
	}
	body, sigLine := text[:last+1], strings.TrimSuffix(string(text[last+1:]), "\n")
	lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
	if len(lines) < 2 || lines[0] != "weft "+kind+" v1" {
		return Opened{}, fmt.Errorf("not a sealed %s (its first line is not \"weft %s v1\")", kind, kind)
	}
	caText, ok := strings.CutPrefix(lines[1], "ca ")
	if !ok {
		return Opened{}, fmt.Errorf("sealed %s: the second line is not \"ca <key>\"", kind)
	}
	signer, err := ParseIdentityKey(caText)
	if err != nil {
		return Opened{}, fmt.Errorf("sealed %s: ca: %w", kind, err)
	}
	sigText, ok := strings.CutPrefix(sigLine, "signature ")
	sig, err := base64.StdEncoding.DecodeString(sigText)
	if !ok || err != nil || len(sig) != ed25519.SignatureSize {
		return Opened{}, fmt.Errorf("sealed %s: the last line is not \"signature <%d bytes in base64>\"", kind, ed25519.SignatureSize)
	}
	if !signer.Verify(body, sig) {
		return Opened{}, fmt.Errorf("sealed %s: the signature does not verify with the ca key it names (changed since it was signed?)", kind)
	}
	out := Opened{Signer: signer}
	for _, line := range lines[2:] {
		name, value, ok := strings.Cut(line, " ")
		if !ok || name == "" {
			return Opened{}, fmt.Errorf("sealed %s: line %.60q is not \"name value\"", kind, line)
		}
		out.Fields = append(out.Fields, [2]string{name, value})
	}
	return out, nil
}

// One returns the value of the field name, which must appear exactly once.
func (o Opened) One(name string) (string, error) {
	value, n := "", 0
	for _, f := range o.Fields {
		if f[0] == name {
			value, n = f[1], n+1
		}
	}
	if n != 1 {
		return "", fmt.Errorf("field %q appears %d times, not once", name, n)
	}
	return value, nil
}

// All returns the values of every field name, in order.
func (o Opened) All(name string) []string {
	var out []string
	for _, f := range o.Fields {
		if f[0] == name {
			out = append(out, f[1])
		}
	}
	return out
}

// Only checks that every field's name is one of names (a record from a
// newer weft, or a changed one, is refused rather than half read).
func (o Opened) Only(names ...string) error {
	for _, f := range o.Fields {
		known := false
		for _, n := range names {
			known = known || f[0] == n
		}
		if !known {
			return fmt.Errorf("unknown field %q", f[0])
		}
	}
	return nil
}

// caKeyHeader starts a CA key file.
const caKeyHeader = "weft ca key v1"

// CreateCA makes a membership CA key in path (0600; an existing file is
// never overwritten).
func CreateCA(path string) (Identity, error) {
	_, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, err
	}
	text := fmt.Sprintf("%s\nkey %s\n", caKeyHeader, base64.StdEncoding.EncodeToString(private.Seed()))
	if err := writeFile(path, ".ca.*", text, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return Identity{}, fmt.Errorf("%s exists: a CA key is never overwritten", path)
		}
		return Identity{}, err
	}
	return Identity{private: private}, nil
}

// LoadCA reads a CA key file CreateCA wrote.
func LoadCA(path string) (Identity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, err
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	seedText, ok := "", len(lines) == 2 && lines[0] == caKeyHeader
	if ok {
		seedText, ok = strings.CutPrefix(lines[1], "key ")
	}
	seed, err := base64.StdEncoding.DecodeString(seedText)
	if !ok || err != nil || len(seed) != ed25519.SeedSize {
		return Identity{}, fmt.Errorf("%s is not a weft CA key (%q, then \"key <base64>\"; made by `weftctl ca create`)", path, caKeyHeader)
	}
	return Identity{private: ed25519.NewKeyFromSeed(seed)}, nil
}

// ReadTrusted reads the CA public keys a host trusts (-membership-ca):
// one base64 key per line, as `weftctl ca create` prints it; blank lines
// and lines starting with '#' are skipped. Several keys are trusted at
// once while a CA is rotated.
func ReadTrusted(path string) ([]IdentityKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []IdentityKey
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseIdentityKey(line)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w (one CA public key per line, from `weftctl ca create`)", path, i+1, err)
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s names no CA public key (one per line, from `weftctl ca create`)", path)
	}
	return out, nil
}
