package wireguard

import (
	"encoding/binary"
	"errors"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tai64n"

	"github.com/weftnet/weft/keys"
)

// Proof of a handshake initiation's sender. A WireGuard initiation is the
// first message of Noise IK: it carries the initiator's static public key
// encrypted to this host's key, and a TAI64N timestamp encrypted under a
// key only the holders of the two static private keys can derive. Since
// weft holds this host's private key, it can check a first message
// before any peer is configured for it: MAC1 (made with this host's
// public key: cheap, and refuses datagrams sent at random), then the
// static key (must be a lease's), then the timestamp (proves the sender
// holds that key's private half; newer than any seen from the key, or it
// is a replay). The on-demand table configures a peer for an initiation
// only once this proof holds (ondemand.go).

// initiationSize is a handshake initiation's length on the wire.
const initiationSize = device.MessageInitiationSize

// Offsets of an initiation's fields (type, sender index, ephemeral key,
// encrypted static key, encrypted timestamp, MAC1, MAC2).
const (
	offEphemeral = 8
	offStatic    = offEphemeral + device.NoisePublicKeySize
	offTimestamp = offStatic + device.NoisePublicKeySize + chacha20poly1305.Overhead
	offMAC1      = offTimestamp + tai64n.TimestampSize + chacha20poly1305.Overhead
)

// Why an initiation was refused.
var (
	errNotInitiation = errors.New("not a handshake initiation")
	errBadMAC1       = errors.New("MAC1 is not made with this host's public key")
	errBadStatic     = errors.New("the initiator's static key does not decrypt")
	errUnknownKey    = errors.New("the initiator's key is no lease's")
	errBadTimestamp  = errors.New("the timestamp does not decrypt: the sender lacks the key's private half")
)

// initiationVerifier checks initiations addressed to one private key.
type initiationVerifier struct {
	private keys.Key
	mac1    device.CookieChecker
	// hash0 is the handshake hash after this host's public key is mixed
	// in, the same for every initiation to it.
	hash0 [blake2s.Size]byte
}

// newInitiationVerifier prepares the checks for initiations to the
// host whose private key is private.
func newInitiationVerifier(private keys.Key) *initiationVerifier {
	v := &initiationVerifier{private: private}
	public := private.Public()
	v.mac1.Init(device.NoisePublicKey(public))
	v.hash0 = mixHash(device.InitialHash, public[:])
	return v
}

// initiator proves msg: it returns the initiator's static key and the
// timestamp it sent, or why msg is refused. known says whether a key is a
// lease's; it is asked before the second Diffie-Hellman, so a stranger's
// initiation costs one.
func (v *initiationVerifier) initiator(msg []byte, known func(keys.Key) bool) (keys.Key, tai64n.Timestamp, error) {
	if len(msg) != initiationSize || binary.LittleEndian.Uint32(msg) != messageInitiation {
		return keys.Key{}, tai64n.Timestamp{}, errNotInitiation
	}
	if !v.mac1.CheckMAC1(msg) {
		return keys.Key{}, tai64n.Timestamp{}, errBadMAC1
	}
	ephemeral := msg[offEphemeral:offStatic]
	hash := mixHash(v.hash0, ephemeral)
	var chainKey, key [blake2s.Size]byte
	device.KDF1(&chainKey, device.InitialChainKey[:], ephemeral)

	shared, err := curve25519.X25519(v.private[:], ephemeral)
	if err != nil { // a low-order point: X25519 refuses an all-zero result
		return keys.Key{}, tai64n.Timestamp{}, errBadStatic
	}
	device.KDF2(&chainKey, &key, chainKey[:], shared)
	var static keys.Key
	sealedStatic := msg[offStatic:offTimestamp]
	if err := open(static[:0], key, sealedStatic, hash); err != nil {
		return keys.Key{}, tai64n.Timestamp{}, errBadStatic
	}
	if !known(static) {
		return static, tai64n.Timestamp{}, errUnknownKey
	}
	hash = mixHash(hash, sealedStatic)

	shared, err = curve25519.X25519(v.private[:], static[:])
	if err != nil {
		return static, tai64n.Timestamp{}, errBadTimestamp
	}
	device.KDF2(&chainKey, &key, chainKey[:], shared)
	var stamp tai64n.Timestamp
	if err := open(stamp[:0], key, msg[offTimestamp:offMAC1], hash); err != nil {
		return static, tai64n.Timestamp{}, errBadTimestamp
	}
	return static, stamp, nil
}

// open decrypts sealed (nonce zero, hash as associated data) into dst.
func open(dst []byte, key [blake2s.Size]byte, sealed []byte, hash [blake2s.Size]byte) error {
	aead, err := chacha20poly1305.New(key[:])
	if err != nil {
		return err
	}
	_, err = aead.Open(dst, device.ZeroNonce[:], sealed, hash[:])
	return err
}

// mixHash is Noise's MixHash: the hash of h followed by data.
func mixHash(h [blake2s.Size]byte, data []byte) [blake2s.Size]byte {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	var out [blake2s.Size]byte
	d.Sum(out[:0])
	return out
}
