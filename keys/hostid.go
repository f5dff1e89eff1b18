package keys

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// HostID is a host's stable identity: 128 random bits made once and kept
// on disk beside the key file. Unlike the WireGuard key (which rotates)
// and the PublicIP (which DHCP, a moved elastic IP or a NAT router may
// change), it stays for the host's life, so a host recognises its own
// lease by it.
type HostID [16]byte

// HostIDFile is the host ID's file name, in the key file's directory.
const HostIDFile = "host-id"

// String is the ID as it is written: 32 lowercase hex digits, as
// /etc/machine-id.
func (id HostID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is unset.
func (id HostID) IsZero() bool { return id == HostID{} }

// ParseHostID reads an ID as String writes it; anything else (upper case,
// another length, all zeros) is refused.
func ParseHostID(text string) (HostID, error) {
	var id HostID
	if len(text) != 2*len(id) || strings.ToLower(text) != text {
		return HostID{}, fmt.Errorf("host ID %.40q is not 32 lowercase hex digits", text)
	}
	if _, err := hex.Decode(id[:], []byte(text)); err != nil {
		return HostID{}, fmt.Errorf("host ID %.40q is not 32 lowercase hex digits", text)
	}
	if id.IsZero() {
		return HostID{}, errors.New("host ID is all zeros")
	}
	return id, nil
}

// HostIDPath is where the host ID of a host whose key is in keyFile lives.
func HostIDPath(keyFile string) string { return filepath.Join(filepath.Dir(keyFile), HostIDFile) }

// LoadOrCreateHostID returns the host ID in path, creating the file with a
// new random ID when it does not exist; created says which happened. A
// file that holds no valid ID is refused, not replaced: the ID is what
// keeps this host's subnet across address changes.
func LoadOrCreateHostID(path string) (id HostID, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		id, err = ParseHostID(strings.TrimSpace(string(data)))
		if err != nil {
			return HostID{}, false, fmt.Errorf("%s: %w; restore it, or remove it to make a new one (this host then claims a new subnet if its address changed too)", path, err)
		}
		return id, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return HostID{}, false, err
	}
	if _, err := io.ReadFull(rand.Reader, id[:]); err != nil {
		return HostID{}, false, err
	}
	if err := writeFile(path, ".host-id.*", id.String()+"\n", false); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return LoadOrCreateHostID(path) // another process made it first
		}
		return HostID{}, false, err
	}
	return id, true, nil
}
