package lease

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/weftnet/weft/keys"
)

// Signed leases. A weft host signs its lease with its identity key
// (keys.Identity): the signature covers the lease key (so a value copied
// under another subnet does not verify) and the stored value up to the
// signature, which is the value's last field ("WeftSig"), so a host checks
// the raw bytes it reads from etcd and no canonical JSON is needed;
// flannel's fields stay byte for byte and flannel ignores weft's. The
// value names the public key it verifies with ("WeftIdentity"). A host
// takes a lease as its own only when its own identity signed it: anyone
// who can write etcd can copy a host's ID into a lease, nobody without
// the host's key can sign one (SECURITY.md).

// When a value was signed bounds replays (Attrs.SignedAt, "WeftSigned"): a
// host that saw a newer value signed by one identity refuses an older one
// (a writer replaying what the host wrote before), and nobody takes a
// value signed longer ago than MaxSignedAge. A host re-signs its lease at
// the renewal after ResignAfter, or sooner when anything in it changes.
const (
	// SignEvery is the granularity of SignedAt: within it, the value a
	// host writes is the same bytes (Ed25519 signatures are
	// deterministic), so its own lease is recognised by comparing bytes.
	SignEvery = 10 * time.Minute
	// ResignAfter is how old a signature may grow before the host's
	// renewal writes its lease again.
	ResignAfter = 12 * time.Hour
	// MaxSignedAge is the age past which no host takes a signed value.
	MaxSignedAge = 48 * time.Hour
	// ClockSkew is how far apart hosts' clocks may be: a value signed up
	// to this far in the future, or this much older than the newest seen
	// from its identity, is still taken.
	ClockSkew = 5 * time.Minute
)

// sigField opens the signature, the last field of a signed value.
const sigField = `,"WeftSig":"`

// sigTextLen is a signature's length in standard base64.
var sigTextLen = base64.StdEncoding.EncodedLen(ed25519.SignatureSize)

// signedMessage is what a lease's signature covers.
func signedMessage(key string, unsigned []byte) []byte {
	msg := make([]byte, 0, len("weft lease v1\n")+len(key)+1+len(unsigned))
	msg = append(msg, "weft lease v1\n"...)
	msg = append(msg, key...)
	msg = append(msg, '\n')
	return append(msg, unsigned...)
}

// Sign returns value (a lease's encoded attributes, naming id's public key
// as WeftIdentity) with id's signature of key and value appended as its
// last field.
func Sign(id keys.Identity, key string, value []byte) []byte {
	sig := id.Sign(signedMessage(key, value))
	out := make([]byte, 0, len(value)+len(sigField)+sigTextLen+2)
	out = append(out, value[:len(value)-1]...) // without the closing brace
	out = append(out, sigField...)
	out = base64.StdEncoding.AppendEncode(out, sig)
	return append(out, `"}`...)
}

// errBadSignature is a signed value whose signature does not verify.
var errBadSignature = errors.New("its signature (WeftSig) does not verify with the WeftIdentity it names for this lease key " +
	"(a value copied from another lease, or changed since it was signed)")

// splitSigned splits a stored value into the part its signature covers
// and the signature; signed is false for a value without one. A value
// that mentions WeftSig anywhere but as its exact last field is refused.
func splitSigned(value []byte) (unsigned, sig []byte, signed bool, err error) {
	if !bytes.Contains(value, []byte(`"WeftSig"`)) {
		return value, nil, false, nil
	}
	tail := len(sigField) + sigTextLen + len(`"}`)
	if len(value) < tail+2 || !bytes.Equal(value[len(value)-tail:len(value)-tail+len(sigField)], []byte(sigField)) ||
		!bytes.HasSuffix(value, []byte(`"}`)) {
		return nil, nil, false, errors.New(`WeftSig is not the value's last field, as "WeftSig":"<base64>"}`)
	}
	sig, err = base64.StdEncoding.DecodeString(string(value[len(value)-tail+len(sigField) : len(value)-2]))
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, nil, false, fmt.Errorf("WeftSig is not %d bytes in base64", ed25519.SignatureSize)
	}
	unsigned = append(bytes.Clone(value[:len(value)-tail]), '}')
	if bytes.Contains(unsigned, []byte(`"WeftSig"`)) {
		return nil, nil, false, errors.New("WeftSig appears twice")
	}
	return unsigned, sig, true, nil
}
