package lease

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/weftnet/weft/keys"
)

// Certificate is a membership CA's statement that the host with HostID and
// identity key Identity may hold Subnet (and IPv6Subnet on a dual-stack
// network) from NotBefore to NotAfter. A host that has one publishes it in
// its lease ("WeftCert"); hosts in enforce mode peer only with leases whose
// certificate a CA they trust signed, for the lease's own subnet, host ID
// and identity (lease/membership). Made by `weftctl member sign`.
type Certificate struct {
	// CA is the key that signed it.
	CA         keys.IdentityKey
	Serial     string // 16 hex digits, random: what a revocation names
	HostID     keys.HostID
	Identity   keys.IdentityKey
	Subnet     netip.Prefix
	IPv6Subnet netip.Prefix // invalid: none
	NotBefore  time.Time
	NotAfter   time.Time
	// Text is the sealed certificate as the CA signed it.
	Text string
}

// certKind is the sealed record kind of a certificate.
const certKind = "member"

// NewSerial is a random certificate serial.
func NewSerial() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// SealCertificate signs c with ca and returns it with Text and CA set.
func SealCertificate(ca keys.Identity, c Certificate) (Certificate, error) {
	if !c.Subnet.IsValid() && !c.IPv6Subnet.IsValid() {
		return Certificate{}, fmt.Errorf("a certificate names a subnet")
	}
	fields := []string{"serial " + c.Serial, "host " + c.HostID.String(), "identity " + c.Identity.String(),
		"subnet " + prefixOrDash(c.Subnet), "ipv6subnet " + prefixOrDash(c.IPv6Subnet),
		"not-before " + strconv.FormatInt(c.NotBefore.Unix(), 10), "not-after " + strconv.FormatInt(c.NotAfter.Unix(), 10)}
	text, err := keys.Seal(ca, certKind, fields)
	if err != nil {
		return Certificate{}, err
	}
	return ParseCertificate([]byte(text))
}

func prefixOrDash(p netip.Prefix) string {
	if !p.IsValid() {
		return "-"
	}
	return p.String()
}

// ParseCertificate reads a sealed certificate and checks its signature
// with the CA key it names; whether that CA is trusted, and whether it
// fits a lease, is the reader's to check (Fits).
func ParseCertificate(text []byte) (Certificate, error) {
	o, err := keys.OpenSealed(text, certKind)
	if err != nil {
		return Certificate{}, err
	}
	if err := o.Only("serial", "host", "identity", "subnet", "ipv6subnet", "not-before", "not-after"); err != nil {
		return Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	c := Certificate{CA: o.Signer, Text: string(text)}
	field := func(name string, parse func(string) error) {
		if err != nil {
			return
		}
		var v string
		if v, err = o.One(name); err == nil {
			if perr := parse(v); perr != nil {
				err = fmt.Errorf("%s %.60q: %w", name, v, perr)
			}
		}
	}
	field("serial", func(v string) error {
		if b, err := hex.DecodeString(v); err != nil || len(b) != 8 {
			return fmt.Errorf("not 16 hex digits")
		}
		c.Serial = v
		return nil
	})
	field("host", func(v string) (e error) { c.HostID, e = keys.ParseHostID(v); return e })
	field("identity", func(v string) (e error) { c.Identity, e = keys.ParseIdentityKey(v); return e })
	field("subnet", func(v string) (e error) { c.Subnet, e = parseCertPrefix(v); return e })
	field("ipv6subnet", func(v string) (e error) { c.IPv6Subnet, e = parseCertPrefix(v); return e })
	field("not-before", func(v string) (e error) { c.NotBefore, e = parseUnix(v); return e })
	field("not-after", func(v string) (e error) { c.NotAfter, e = parseUnix(v); return e })
	if err != nil {
		return Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	if !c.NotAfter.After(c.NotBefore) {
		return Certificate{}, fmt.Errorf("certificate: not-after is not after not-before")
	}
	return c, nil
}

func parseCertPrefix(v string) (netip.Prefix, error) {
	if v == "-" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil || p.Masked() != p || p.Addr().Zone() != "" || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("not a subnet")
	}
	return p, nil
}

func parseUnix(v string) (time.Time, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("not Unix seconds")
	}
	return time.Unix(n, 0), nil
}

// Fits says why c does not certify lease l at now, or "" when it does:
// the lease's host ID, identity and subnets are the certificate's, and
// now is within its validity.
func (c Certificate) Fits(l *Lease, now time.Time) string {
	switch {
	case c.HostID != l.Attrs.HostID:
		return fmt.Sprintf("its certificate %s is for host ID %s, the lease has %s", c.Serial, c.HostID, l.Attrs.HostID)
	case c.Identity != l.Attrs.Identity || !l.Signed:
		return fmt.Sprintf("its certificate %s is for identity %s, the lease is not signed by it", c.Serial, c.Identity)
	case c.Subnet != l.Subnet || c.IPv6Subnet != l.IPv6Subnet:
		return fmt.Sprintf("its certificate %s is for subnet %s, the lease is %s", c.Serial,
			joinPrefixes(c.Subnet, c.IPv6Subnet), joinPrefixes(l.Subnet, l.IPv6Subnet))
	case now.Before(c.NotBefore.Add(-ClockSkew)):
		return fmt.Sprintf("its certificate %s is valid only from %s", c.Serial, c.NotBefore.UTC().Format(time.RFC3339))
	case now.After(c.NotAfter.Add(ClockSkew)):
		return fmt.Sprintf("its certificate %s expired at %s (renew it with `weftctl member sign`)", c.Serial, c.NotAfter.UTC().Format(time.RFC3339))
	}
	return ""
}

func joinPrefixes(a, b netip.Prefix) string {
	switch {
	case !b.IsValid():
		return prefixOrDash(a)
	case !a.IsValid():
		return b.String()
	}
	return a.String() + "," + b.String()
}

// encodeCert is a certificate as a lease carries it: its text in base64,
// so the lease value stays one line of JSON.
func encodeCert(c *Certificate) string { return base64.StdEncoding.EncodeToString([]byte(c.Text)) }

// decodeCert reads a lease's WeftCert.
func decodeCert(text string) (*Certificate, error) {
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return nil, fmt.Errorf("WeftCert is not base64")
	}
	c, err := ParseCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("WeftCert: %w", err)
	}
	return &c, nil
}
