package membership

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// Revocations is the CA's list of certificates (by serial) and identity
// keys no longer members, stored at <prefix>/membership/revoked. Its
// Serial only goes up: a host keeps the highest it took on disk and
// refuses a lower one, so an old list cannot be replayed to bring a
// revoked host back.
type Revocations struct {
	CA         keys.IdentityKey
	Serial     uint64
	Issued     time.Time
	Certs      []string // certificate serials
	Identities []keys.IdentityKey
}

const revocationsKind = "revocations"

// Seal signs r with ca.
func (r Revocations) Seal(ca keys.Identity) ([]byte, error) {
	fields := []string{"serial " + strconv.FormatUint(r.Serial, 10), "issued " + strconv.FormatInt(r.Issued.Unix(), 10)}
	for _, c := range r.Certs {
		fields = append(fields, "cert "+c)
	}
	for _, id := range r.Identities {
		fields = append(fields, "identity "+id.String())
	}
	text, err := keys.Seal(ca, revocationsKind, fields)
	return []byte(text), err
}

// ParseRevocations reads a sealed revocation list (its signature checked
// with the CA key it names; whether that CA is trusted is the caller's).
func ParseRevocations(text []byte) (Revocations, error) {
	o, err := keys.OpenSealed(text, revocationsKind)
	if err != nil {
		return Revocations{}, err
	}
	if err := o.Only("serial", "issued", "cert", "identity"); err != nil {
		return Revocations{}, fmt.Errorf("revocations: %w", err)
	}
	r := Revocations{CA: o.Signer}
	if r.Serial, err = oneUint(o, "serial"); err != nil {
		return Revocations{}, fmt.Errorf("revocations: %w", err)
	}
	issued, err := oneUint(o, "issued")
	if err != nil {
		return Revocations{}, fmt.Errorf("revocations: %w", err)
	}
	r.Issued = time.Unix(int64(issued), 0)
	for _, c := range o.All("cert") {
		if b, err := hex.DecodeString(c); err != nil || len(b) != 8 {
			return Revocations{}, fmt.Errorf("revocations: cert %.40q is not a certificate serial (16 hex digits)", c)
		}
		r.Certs = append(r.Certs, c)
	}
	for _, text := range o.All("identity") {
		id, err := keys.ParseIdentityKey(text)
		if err != nil {
			return Revocations{}, fmt.Errorf("revocations: %w", err)
		}
		r.Identities = append(r.Identities, id)
	}
	return r, nil
}

// revokes says why c is revoked by r, or "".
func (r *Revocations) revokes(c *lease.Certificate) string {
	if r == nil {
		return ""
	}
	if slices.Contains(r.Certs, c.Serial) {
		return fmt.Sprintf("its certificate %s is revoked (revocation list %d)", c.Serial, r.Serial)
	}
	if slices.Contains(r.Identities, c.Identity) {
		return fmt.Sprintf("its identity %s is revoked (revocation list %d)", c.Identity, r.Serial)
	}
	return ""
}

// ConfigSeal is the CA's signature of one network config: its SHA-256 and
// a Serial that only goes up, stored at <prefix>/membership/config. In
// enforce mode a host runs only a config whose seal a trusted CA signed,
// with a serial no lower than the highest it took (kept on disk): an
// etcd writer can neither write a config of its own nor put back an
// older one.
type ConfigSeal struct {
	CA     keys.IdentityKey
	Serial uint64
	SHA256 [sha256.Size]byte
}

const configSealKind = "config"

// SealConfig signs config's bytes with ca under serial.
func SealConfig(ca keys.Identity, config []byte, serial uint64) ([]byte, error) {
	sum := sha256.Sum256(config)
	text, err := keys.Seal(ca, configSealKind, []string{"serial " + strconv.FormatUint(serial, 10), "sha256 " + hex.EncodeToString(sum[:])})
	return []byte(text), err
}

// ParseConfigSeal reads a sealed config seal (its signature checked with
// the CA key it names).
func ParseConfigSeal(text []byte) (ConfigSeal, error) {
	o, err := keys.OpenSealed(text, configSealKind)
	if err != nil {
		return ConfigSeal{}, err
	}
	if err := o.Only("serial", "sha256"); err != nil {
		return ConfigSeal{}, fmt.Errorf("config seal: %w", err)
	}
	s := ConfigSeal{CA: o.Signer}
	if s.Serial, err = oneUint(o, "serial"); err != nil {
		return ConfigSeal{}, fmt.Errorf("config seal: %w", err)
	}
	sumText, err := o.One("sha256")
	sum, herr := hex.DecodeString(sumText)
	if err != nil || herr != nil || len(sum) != sha256.Size {
		return ConfigSeal{}, fmt.Errorf("config seal: sha256 is not %d hex digits", 2*sha256.Size)
	}
	copy(s.SHA256[:], sum)
	return s, nil
}

// Covers reports whether the seal is of exactly config's bytes.
func (s ConfigSeal) Covers(config []byte) bool { return sha256.Sum256(config) == s.SHA256 }

const peerSealKind = "peer"

// peerFields are what a CA signs of an outside peer: every field a host
// configures from it.
func peerFields(p lease.OutsidePeer) []string {
	endpoint := "-"
	if p.Endpoint.IsValid() {
		endpoint = p.Endpoint.String()
	}
	return []string{"name " + p.Name, "public-key " + p.PublicKey, "address " + p.Address.String(),
		"endpoint " + endpoint, "keepalive " + strconv.Itoa(p.Keepalive)}
}

// SealPeer signs outside peer p with ca, as its record's Seal.
func SealPeer(ca keys.Identity, p lease.OutsidePeer) (string, error) {
	text, err := keys.Seal(ca, peerSealKind, peerFields(p))
	return base64.StdEncoding.EncodeToString([]byte(text)), err
}

// peerSealSigner checks p's Seal is a CA's signature of p's own fields
// and returns the CA's key.
func peerSealSigner(p lease.OutsidePeer) (keys.IdentityKey, error) {
	if p.Seal == "" {
		return keys.IdentityKey{}, fmt.Errorf("it has no CA seal (add it with `weftctl peer add -ca CA_KEY`)")
	}
	raw, err := base64.StdEncoding.DecodeString(p.Seal)
	if err != nil {
		return keys.IdentityKey{}, fmt.Errorf("its Seal is not base64")
	}
	o, err := keys.OpenSealed(raw, peerSealKind)
	if err != nil {
		return keys.IdentityKey{}, err
	}
	want := peerFields(p)
	if len(o.Fields) != len(want) {
		return keys.IdentityKey{}, fmt.Errorf("its seal is not of this peer's fields")
	}
	for i, f := range o.Fields {
		if f[0]+" "+f[1] != want[i] {
			return keys.IdentityKey{}, fmt.Errorf("its seal is not of this peer's %s", f[0])
		}
	}
	return o.Signer, nil
}

func oneUint(o keys.Opened, name string) (uint64, error) {
	v, err := o.One(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		return 0, fmt.Errorf("%s %.30q is not a number", name, v)
	}
	return n, nil
}
