// Package membership is weft's signed membership: an offline cluster CA
// (a key that never touches etcd) certifies which host ID and identity
// key may hold which subnet, and seals the network config and outside
// peers. Each host reads the CA's public keys from a local file, never
// from etcd, and runs in a local mode: off, warn (log what is not
// certified, peer anyway: a migration) or enforce (peer only with
// certified leases, run only a sealed config, configure only sealed
// outside peers). An etcd writer without the CA key can then neither join
// the mesh nor turn encryption off (SECURITY.md).
package membership

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// Mode is how a host holds others to membership.
type Mode int

// The modes, as -membership names them.
const (
	Off Mode = iota
	Warn
	Enforce
)

func (m Mode) String() string { return [...]string{"off", "warn", "enforce"}[m] }

// ParseMode reads a mode as String writes it.
func ParseMode(text string) (Mode, error) {
	for m := Off; m <= Enforce; m++ {
		if m.String() == text {
			return m, nil
		}
	}
	return Off, fmt.Errorf("-membership %q: use off, warn or enforce", text)
}

// Policy is one host's membership rules: the CA keys it trusts, its mode,
// the newest revocation list it took, and the serials it must not go
// below (kept in a state file).
type Policy struct {
	mode    Mode
	trusted []keys.IdentityKey
	state   string // the state file's path
	log     *slog.Logger

	mu      sync.Mutex
	revoked *Revocations
	serials serials
	warned  map[string]string // lease key or peer name → reason last logged

	refused atomic.Uint64
}

// serials are the highest sealed serials this host took: kept on disk so a
// restart does not forget them.
type serials struct {
	config, revocations uint64
}

// NewPolicy returns the policy of mode over the trusted CA keys, keeping
// its serials in stateFile (read now; missing: none taken yet).
func NewPolicy(mode Mode, trusted []keys.IdentityKey, stateFile string, log *slog.Logger) (*Policy, error) {
	p := &Policy{mode: mode, trusted: trusted, state: stateFile, log: log.With("component", "membership"),
		warned: map[string]string{}}
	data, err := os.ReadFile(stateFile)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		name, value, _ := strings.Cut(line, " ")
		n, err := strconv.ParseUint(value, 10, 63)
		if err != nil || name != "config-serial" && name != "revocations-serial" {
			return nil, fmt.Errorf("%s: line %.60q is not \"config-serial N\" or \"revocations-serial N\"; "+
				"fix it, or remove it (an old config or revocation list could then be replayed once)", stateFile, line)
		}
		if name == "config-serial" {
			p.serials.config = n
		} else {
			p.serials.revocations = n
		}
	}
	return p, nil
}

// Mode is the policy's mode.
func (p *Policy) Mode() Mode { return p.mode }

// Refused counts leases, peers and configs refused or warned about.
func (p *Policy) Refused() uint64 { return p.refused.Load() }

// Trusts reports whether ca is one of the trusted CA keys.
func (p *Policy) Trusts(ca keys.IdentityKey) bool { return slices.Contains(p.trusted, ca) }

// Check says why l is no certified member at now, or "" when it is.
func (p *Policy) Check(l *lease.Lease, now time.Time) string {
	c := l.Attrs.Cert()
	switch {
	case !l.Signed:
		return "it is unsigned (a flannel host's or an older weft's): it cannot be a certified member"
	case c == nil:
		return "it has no membership certificate (WeftCert): enroll its host (`weftctl member request` there, `weftctl member sign` with the CA)"
	case !p.Trusts(c.CA):
		return fmt.Sprintf("its certificate %s is signed by %s, not a CA in -membership-ca", c.Serial, c.CA)
	}
	if why := c.Fits(l, now); why != "" {
		return why
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revoked.revokes(c)
}

// Admit is mesh.Admit: in enforce mode the reason l is no member (the
// reconciler skips it and logs that once); in warn mode it logs the
// reason once and admits l; off admits every lease.
func (p *Policy) Admit(l *lease.Lease) string {
	if p.mode == Off {
		return ""
	}
	why := p.Check(l, time.Now())
	if why == "" {
		return ""
	}
	p.refused.Add(1)
	if p.mode == Enforce {
		return "no certified member: " + why
	}
	p.warnOnce(l.Key(), why, "a lease is no certified member; peering anyway (-membership warn)")
	return ""
}

// AdmitPeer says why outside peer o is refused ("" when it is admitted): in
// enforce mode, one without a trusted CA's seal of its own fields; warn
// mode logs that once and admits it.
func (p *Policy) AdmitPeer(o lease.OutsidePeer) string {
	if p.mode == Off {
		return ""
	}
	signer, err := peerSealSigner(o)
	why := ""
	switch {
	case err != nil:
		why = err.Error()
	case !p.Trusts(signer):
		why = fmt.Sprintf("its seal is signed by %s, not a CA in -membership-ca", signer)
	}
	if why == "" {
		return ""
	}
	p.refused.Add(1)
	if p.mode == Enforce {
		p.warnOnce("peers/"+o.Name, why, "refusing an outside peer (-membership enforce)")
		return why
	}
	p.warnOnce("peers/"+o.Name, why, "an outside peer has no CA seal; configuring it anyway (-membership warn)")
	return ""
}

// warnOnce logs msg for what, once per reason.
func (p *Policy) warnOnce(what, why, msg string) {
	p.mu.Lock()
	said := p.warned[what] == why
	p.warned[what] = why
	p.mu.Unlock()
	if !said {
		p.log.Warn(msg, "what", what, "why", why)
	}
}

// TakeRevocations takes a revocation list read from the store: it must be
// signed by a trusted CA, with a serial no lower than the highest taken.
// changed says the list in force changed (leases must be looked at again).
func (p *Policy) TakeRevocations(text []byte) (changed bool, err error) {
	r, err := ParseRevocations(text)
	if err != nil {
		return false, err
	}
	if !p.Trusts(r.CA) {
		return false, fmt.Errorf("the revocation list is signed by %s, not a CA in -membership-ca", r.CA)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.Serial < p.serials.revocations {
		return false, fmt.Errorf("the revocation list has serial %d, lower than %d taken before (a replay?)", r.Serial, p.serials.revocations)
	}
	if p.revoked != nil && p.revoked.Serial == r.Serial && p.revoked.CA == r.CA {
		return false, nil
	}
	p.revoked = &r
	if r.Serial > p.serials.revocations {
		p.serials.revocations = r.Serial
		if err := p.saveLocked(); err != nil {
			return true, err
		}
	}
	return true, nil
}

// CheckConfig says why config (the raw bytes of <prefix>/config) may not
// run under seal (the raw bytes of <prefix>/membership/config; nil: none),
// or nil: the seal is a trusted CA's, covers exactly these bytes, and its
// serial is no lower than the highest taken (a higher one is kept).
func (p *Policy) CheckConfig(config, seal []byte) error {
	if seal == nil {
		return fmt.Errorf("the network config has no CA seal at membership/config (seal it with `weftctl config put -ca CA_KEY` or `weftctl config seal -ca CA_KEY`)")
	}
	s, err := ParseConfigSeal(seal)
	if err != nil {
		return err
	}
	switch {
	case !p.Trusts(s.CA):
		return fmt.Errorf("the config seal is signed by %s, not a CA in -membership-ca", s.CA)
	case !s.Covers(config):
		return fmt.Errorf("the config seal (serial %d) is not of the stored config's bytes: the config changed since it was sealed", s.Serial)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s.Serial < p.serials.config {
		return fmt.Errorf("the config seal has serial %d, lower than %d taken before (an old config put back?)", s.Serial, p.serials.config)
	}
	if s.Serial > p.serials.config {
		p.serials.config = s.Serial
		return p.saveLocked()
	}
	return nil
}

// saveLocked writes the serials to the state file.
func (p *Policy) saveLocked() error {
	text := fmt.Sprintf("config-serial %d\nrevocations-serial %d\n", p.serials.config, p.serials.revocations)
	if err := os.MkdirAll(filepath.Dir(p.state), 0o700); err != nil {
		return err
	}
	tmp := p.state + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.state)
}

// OwnCertificate checks a certificate read for this host (at
// <prefix>/membership/hosts/<host ID>): a trusted CA's, for this host's ID
// and identity, not revoked. Its subnet is checked against the lease by
// Fits.
func (p *Policy) OwnCertificate(text []byte, host keys.HostID, identity keys.IdentityKey) (*lease.Certificate, error) {
	c, err := lease.ParseCertificate(text)
	if err != nil {
		return nil, err
	}
	switch {
	case !p.Trusts(c.CA):
		return nil, fmt.Errorf("certificate %s is signed by %s, not a CA in -membership-ca", c.Serial, c.CA)
	case c.HostID != host || c.Identity != identity:
		return nil, fmt.Errorf("certificate %s is for host %s with identity %s, not this host (%s, %s)", c.Serial, c.HostID, c.Identity, host, identity)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if why := p.revoked.revokes(&c); why != "" {
		return nil, fmt.Errorf("certificate %s: %s", c.Serial, why)
	}
	return &c, nil
}
