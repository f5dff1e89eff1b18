package keys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Identity is a host's signing key (Ed25519): it signs the host's lease,
// so the host takes a lease as its own only when its own key signed it,
// and nobody who can write etcd can make one look like this host's.
// It is made once and kept beside the WireGuard key, with the machine ID
// it was made under: a copy found on another machine (a cloned disk or a
// VM image) is told apart there and replaced.
type Identity struct {
	private ed25519.PrivateKey
}

// IdentityKey is an identity's public half, as leases publish it
// ("WeftIdentity").
type IdentityKey [ed25519.PublicKeySize]byte

// String is the key in standard base64, as leases carry it.
func (k IdentityKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is unset.
func (k IdentityKey) IsZero() bool { return k == IdentityKey{} }

// ParseIdentityKey reads a key as String writes it.
func ParseIdentityKey(text string) (IdentityKey, error) {
	var k IdentityKey
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != len(k) {
		return IdentityKey{}, fmt.Errorf("identity key %.60q is not %d bytes in base64", text, len(k))
	}
	copy(k[:], raw)
	if k.IsZero() {
		return IdentityKey{}, errors.New("identity key is all zeros")
	}
	return k, nil
}

// Public is the identity's public key.
func (id Identity) Public() IdentityKey {
	var k IdentityKey
	copy(k[:], id.private.Public().(ed25519.PublicKey))
	return k
}

// Sign signs message.
func (id Identity) Sign(message []byte) []byte { return ed25519.Sign(id.private, message) }

// IsZero reports whether id holds no key.
func (id Identity) IsZero() bool { return len(id.private) == 0 }

// Verify reports whether sig is key's signature of message.
func (k IdentityKey) Verify(message, sig []byte) bool {
	return !k.IsZero() && ed25519.Verify(k[:], message, sig)
}

// IdentityFile is the identity's file name, in the key file's directory.
const IdentityFile = "identity"

// IdentityPath is where the identity of a host whose key is in keyFile
// lives.
func IdentityPath(keyFile string) string { return filepath.Join(filepath.Dir(keyFile), IdentityFile) }

// IdentityState says how LoadOrCreateIdentity found the identity.
type IdentityState int

// How an identity was found.
const (
	// IdentityLoaded: the file held this machine's identity.
	IdentityLoaded IdentityState = iota
	// IdentityCreated: there was none; a new one was made.
	IdentityCreated
	// IdentityCloned: the file was made under another machine ID (a
	// copied disk or image); a new one replaced it, and the host must
	// make a new host ID too.
	IdentityCloned
)

// identityHeader starts an identity file.
const identityHeader = "weft identity v1"

// LoadOrCreateIdentity returns the identity in path, made under
// machineID (this machine's /etc/machine-id; empty when unknown, which
// tells no clone apart). A missing file is created; one made under another
// machine ID is replaced with a new identity (IdentityCloned); a file that
// holds no identity is refused, not replaced.
func LoadOrCreateIdentity(path, machineID string) (Identity, IdentityState, error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		id, madeUnder, err := parseIdentity(string(data))
		if err != nil {
			return Identity{}, 0, fmt.Errorf("%s: %w; restore it, or remove it to make a new one (this host then claims a new subnet)", path, err)
		}
		if madeUnder != "" && machineID != "" && madeUnder != machineID {
			id, err := newIdentity(path, machineID, true)
			return id, IdentityCloned, err
		}
		return id, IdentityLoaded, nil
	case errors.Is(err, fs.ErrNotExist):
		id, err := newIdentity(path, machineID, false)
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateIdentity(path, machineID) // another process made it first
		}
		return id, IdentityCreated, err
	default:
		return Identity{}, 0, err
	}
}

// newIdentity makes an identity and writes it to path under machineID
// (replacing the file when replace is set).
func newIdentity(path, machineID string, replace bool) (Identity, error) {
	_, private, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, err
	}
	text := fmt.Sprintf("%s\nmachine %s\nkey %s\n", identityHeader, machineOrDash(machineID),
		base64.StdEncoding.EncodeToString(private.Seed()))
	if err := writeFile(path, ".identity.*", text, replace); err != nil {
		return Identity{}, err
	}
	return Identity{private: private}, nil
}

func machineOrDash(id string) string {
	if id == "" {
		return "-"
	}
	return id
}

// parseIdentity reads an identity file: its header, the machine ID it
// was made under ("-": unknown), and the key's seed.
func parseIdentity(text string) (Identity, string, error) {
	lines := strings.Split(strings.TrimSpace(text), "\n")
	if len(lines) != 3 || lines[0] != identityHeader {
		return Identity{}, "", fmt.Errorf("not a weft identity file (%q, then a machine and a key line)", identityHeader)
	}
	machine, ok := strings.CutPrefix(lines[1], "machine ")
	if !ok {
		return Identity{}, "", errors.New("the second line is not \"machine <machine-id>\"")
	}
	seedText, ok := strings.CutPrefix(lines[2], "key ")
	seed, err := base64.StdEncoding.DecodeString(seedText)
	if !ok || err != nil || len(seed) != ed25519.SeedSize {
		return Identity{}, "", fmt.Errorf("the third line is not \"key <%d bytes in base64>\"", ed25519.SeedSize)
	}
	if machine == "-" {
		machine = ""
	}
	return Identity{private: ed25519.NewKeyFromSeed(seed)}, machine, nil
}

// ReadMachineID reads a machine ID file (/etc/machine-id): its first line,
// trimmed; empty when the file is missing or empty.
func ReadMachineID(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(line)
}

// LoadIdentity reads the identity in path without making or replacing
// one (weftctl member request).
func LoadIdentity(path string) (Identity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, err
	}
	id, _, err := parseIdentity(string(data))
	if err != nil {
		return Identity{}, fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

// IdentityFromSeed is the identity of a 32-byte Ed25519 seed, kept
// nowhere: for simulated hosts (weftbench signs a lease per simulated
// host with one).
func IdentityFromSeed(seed [ed25519.SeedSize]byte) Identity {
	return Identity{private: ed25519.NewKeyFromSeed(seed[:])}
}
