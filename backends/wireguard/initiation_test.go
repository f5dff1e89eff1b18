package wireguard

import (
	"crypto/rand"
	"encoding/binary"
	"testing"

	"golang.zx2c4.com/wireguard/device"

	"github.com/weftnet/weft/backends/wireguard/wireguardtest"
	"github.com/weftnet/weft/keys"
)

// newInitiationSource starts real wireguard-go with private, peered with
// responder, stopped when the test ends.
func newInitiationSource(t testing.TB, private, responder keys.Key) *initiationSource {
	t.Helper()
	src, err := wireguardtest.NewInitiationSource(private, responder)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(src.Close)
	return &initiationSource{src}
}

// initiationSource is wireguardtest's, failing the test on errors.
type initiationSource struct {
	*wireguardtest.InitiationSource
}

// next is the source's next initiation.
func (s *initiationSource) next(t testing.TB) []byte {
	t.Helper()
	msg, err := s.Next()
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// privateKey is a fresh private key.
func privateKey(t testing.TB) keys.Key {
	t.Helper()
	k, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestInitiationProof: an initiation made by real wireguard-go proves
// its sender's key and carries its timestamp, newer each time; one
// addressed to another host, random bytes, a stranger's key, and a
// timestamp tampered with (MAC1 made again, as anyone knowing this
// host's public key can) are refused, each for its reason.
func TestInitiationProof(t *testing.T) {
	self, peer, stranger := privateKey(t), privateKey(t), privateKey(t)
	v := newInitiationVerifier(self)
	known := func(k keys.Key) bool { return k == peer.Public() }
	src := newInitiationSource(t, peer, self.Public())
	first, second := src.next(t), src.next(t)
	k1, ts1, err := v.initiator(first, known)
	if err != nil || k1 != peer.Public() {
		t.Fatalf("a real initiation: key %v, %v; want %v", k1, err, peer.Public())
	}
	k2, ts2, err := v.initiator(second, known)
	if err != nil || k2 != k1 || !ts2.After(ts1) {
		t.Errorf("the next initiation: %v, timestamp %v after %v", err, ts2, ts1)
	}

	random := make([]byte, initiationSize)
	rand.Read(random)
	binary.LittleEndian.PutUint32(random, messageInitiation)
	tampered := append([]byte(nil), first...)
	tampered[offTimestamp] ^= 1
	var macs device.CookieGenerator
	macs.Init(device.NoisePublicKey(self.Public()))
	macs.AddMacs(tampered)
	remade := append([]byte(nil), first...)
	macs.AddMacs(remade)
	if _, _, err := v.initiator(remade, known); err != nil {
		t.Fatalf("MAC1 made again over an untouched initiation: %v", err)
	}
	for _, c := range []struct {
		name string
		v    *initiationVerifier
		msg  []byte
		want error
	}{
		{"to another host", newInitiationVerifier(stranger), first, errBadMAC1},
		{"random bytes", v, random, errBadMAC1},
		{"too short", v, first[:100], errNotInitiation},
		{"a stranger's key", v, newInitiationSource(t, stranger, self.Public()).next(t), errUnknownKey},
		{"timestamp tampered with", v, tampered, errBadTimestamp},
	} {
		if _, _, err := c.v.initiator(c.msg, known); err != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// BenchmarkInitiationProof: the cost of proving one initiation (two
// X25519), which proofRate bounds.
func BenchmarkInitiationProof(b *testing.B) {
	self, peer := privateKey(b), privateKey(b)
	v := newInitiationVerifier(self)
	msg := newInitiationSource(b, peer, self.Public()).next(b)
	known := func(keys.Key) bool { return true }
	b.ResetTimer()
	for range b.N {
		if _, _, err := v.initiator(msg, known); err != nil {
			b.Fatal(err)
		}
	}
}
