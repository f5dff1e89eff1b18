// Package keys keeps a host's identity in files that survive reboots: its
// WireGuard private key, created 0600 from its first byte (temp file and
// rename), loaded on every start, refused — never silently replaced — when
// it is corrupt, empty or readable by others, and replaced only by an
// explicit rotation (only the public key ever leaves the host); and its
// host ID beside it (hostid.go), which never changes.
package keys

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/crypto/curve25519"
)

// DefaultPath is where weftd keeps its key.
const DefaultPath = "/var/lib/weft/wg.key"

// ErrBadKeyFile is wrapped by every refusal to use a key file.
var ErrBadKeyFile = errors.New("unusable WireGuard key file")

// Key is a Curve25519 key as WireGuard uses it.
type Key [32]byte

// String is the base64 form `wg` prints.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey decodes a base64 key of exactly 32 bytes.
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return k, fmt.Errorf("not base64: %w", err)
	}
	if len(b) != len(k) {
		return k, fmt.Errorf("decodes to %d bytes, a WireGuard key has 32", len(b))
	}
	copy(k[:], b)
	if k.String() != s {
		// base64 skips '\r' and '\n' and tolerates other spellings: only
		// the one text wg prints is a key, so a key read from etcd can be
		// printed for another program (a wg-quick file) as it was given.
		return Key{}, errors.New("is not in the 44-character form wg prints")
	}
	return k, nil
}

// Generate makes a new private key, clamped as Curve25519 requires.
func Generate() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, err
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public derives the public key from a private key.
func (k Key) Public() Key {
	var pub Key
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		// Only a low-order result fails, which a clamped private key never gives.
		panic(fmt.Sprintf("deriving public key: %v", err))
	}
	copy(pub[:], out)
	return pub
}

// LoadOrCreate returns the private key in path, creating the file with a new
// key when it does not exist. created says which happened.
func LoadOrCreate(path string) (key Key, created bool, err error) {
	key, err = Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	key, err = Generate()
	if err != nil {
		return key, false, err
	}
	if err := write(path, key, false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Another process created it first: use theirs.
			key, err = Load(path)
			return key, false, err
		}
		return key, false, err
	}
	return key, true, nil
}

// Load reads and checks an existing key file. It opens the file itself,
// never a symlink, and checks what it opened: a regular file owned by this
// user, readable by nobody else, in a directory nobody else can write to
// (someone who can would swap the key).
func Load(path string) (Key, error) {
	if err := checkDir(filepath.Dir(path)); err != nil {
		return Key{}, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return Key{}, fmt.Errorf("%w: %s is a symlink; keep the key in a regular file there (`cp --remove-destination $(readlink -f %s) %s`)",
			ErrBadKeyFile, path, path, path)
	}
	if err != nil {
		return Key{}, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return Key{}, err
	}
	if !info.Mode().IsRegular() {
		return Key{}, fmt.Errorf("%w: %s is not a regular file", ErrBadKeyFile, path)
	}
	if st, ok := info.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return Key{}, fmt.Errorf("%w: %s belongs to uid %d, not to weftd's uid %d; run `chown %d %s`",
			ErrBadKeyFile, path, st.Uid, os.Geteuid(), os.Geteuid(), path)
	}
	if perm := info.Mode().Perm(); perm&0o077 != 0 {
		return Key{}, fmt.Errorf("%w: %s has mode %04o, readable beyond its owner; run `chmod 600 %s` (and consider rotating the key: it may have leaked)",
			ErrBadKeyFile, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return Key{}, err
	}
	key, err := ParseKey(string(bytes.TrimSpace(data)))
	if err != nil {
		return Key{}, fmt.Errorf("%w: %s: %v; it should hold one key as `wg genkey` writes it. Restore it, or remove it to make a new key (peers will pick the new one up from etcd)",
			ErrBadKeyFile, path, err)
	}
	return key, nil
}

// checkDir refuses a key directory that others can write to: they could
// replace the key file (a sticky directory such as /tmp included, where
// they could plant one before weftd creates it).
func checkDir(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return nil // missing: created 0700 when the key is written
	}
	if perm := info.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: directory %s has mode %04o, writable by others who could swap the key; run `chmod go-w %s` or keep the key elsewhere (-wireguard-key-file)",
			ErrBadKeyFile, dir, perm, dir)
	}
	return nil
}

// Rotate replaces the key in path with a new one and returns it.
func Rotate(path string) (Key, error) {
	key, err := Generate()
	if err != nil {
		return key, err
	}
	return key, write(path, key, true)
}

// write stores key in path (writeFile).
func write(path string, key Key, replace bool) error {
	return writeFile(path, ".wg.key.*", key.String()+"\n", replace)
}

// writeFile stores text in path through a 0600 temp file (named by pattern)
// in the same directory, so the file is never briefly readable by others
// and never half-written. Without replace, an existing file is left alone
// and fs.ErrExist returned.
func writeFile(path, pattern, text string, replace bool) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, pattern) // created 0600
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(text)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if replace {
		return os.Rename(tmp.Name(), path)
	}
	// Link fails if path exists, so a concurrent creator is never overwritten.
	return os.Link(tmp.Name(), path)
}
