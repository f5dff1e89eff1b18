package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/weftnet/weft/cmd/internal/status"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/membership"
	"github.com/weftnet/weft/mesh"
)

// Signed membership on this host (-membership-ca, -membership): the CA
// keys come from a local file, never from etcd; weftd fetches its own
// certificate and the revocation list from etcd every memberEvery, checks
// both against those keys, publishes its certificate in its lease, and
// (in enforce mode) peers only with certified leases, runs only a sealed
// config and configures only sealed outside peers.

// memberEvery is how often weftd reads its certificate and the revocation
// list: an enrolment or a revocation takes effect within it.
const memberEvery = 5 * time.Second

// renewCertBefore is how long before its certificate expires a host says
// it needs a new one (daily, in its log).
const renewCertBefore = 30 * 24 * time.Hour

// memberStateFile is where the policy keeps the serials it took, beside
// the key file; memberCertFile is this host's certificate as last taken,
// so one deleted from etcd is still published (a deletion is a denial
// of service, not a reason to leave the mesh).
const (
	memberStateFile = "membership-state"
	memberCertFile  = "membership-cert"
)

// members is this run's membership: nil when -membership is off.
type members struct {
	policy *membership.Policy
	store  membership.Store
	host   keys.HostID
	id     keys.IdentityKey
	// certFile keeps this host's certificate (memberCertFile).
	certFile string

	mu   sync.Mutex
	own  *lease.Certificate // this host's, as last read and checked
	note string             // why this host has none in force, for status
}

// openMembers reads the trusted CA keys and the kept serials; nil when
// membership is off.
func openMembers(o *options, store *etcdstore.Store, log *slog.Logger) (*members, error) {
	if o.membershipMode == membership.Off {
		return nil, nil
	}
	trusted, err := keys.ReadTrusted(o.membershipCA)
	if err != nil {
		return nil, err
	}
	policy, err := membership.NewPolicy(o.membershipMode, trusted, filepath.Join(filepath.Dir(o.keyFile), memberStateFile), log)
	if err != nil {
		return nil, err
	}
	log.Info("signed membership", "mode", o.membershipMode, "trusted_cas", len(trusted), "ca_file", o.membershipCA)
	return &members{policy: policy, store: store, certFile: filepath.Join(filepath.Dir(o.keyFile), memberCertFile)}, nil
}

// configStore is the store the network config is read from: with
// membership on, the gate that lets through only a config the policy
// runs.
func (m *members) configStore(store lease.Store) lease.Store {
	if m == nil {
		return store
	}
	return &membership.ConfigGate{Store: store, Members: m.store, Policy: m.policy}
}

// admit is the reconciler's Admit (nil with membership off).
func (m *members) admit() mesh.Admit {
	if m == nil {
		return nil
	}
	return m.policy.Admit
}

// admitPeer is the outside peers' filter (nil with membership off).
func (m *members) admitPeer() func(lease.OutsidePeer) string {
	if m == nil {
		return nil
	}
	return m.policy.AdmitPeer
}

// start reads this host's certificate before it claims: its subnet is the
// one to claim (a host that was down past its lease's TTL gets the subnet
// it was certified for back when nobody took it meanwhile), and the claim
// publishes it.
func (m *members) start(ctx context.Context, self hostFacts, req *lease.ClaimRequest, log *slog.Logger) {
	if m == nil {
		return
	}
	m.host, m.id = self.hostID, self.identity.Public()
	m.readRevocations(ctx, log)
	c := m.readOwn(ctx, log)
	if c == nil {
		return
	}
	if c.Subnet.IsValid() {
		req.Previous = c.Subnet
	}
	if c.IPv6Subnet.IsValid() {
		req.PreviousIPv6 = c.IPv6Subnet
	}
	req.Attrs = req.Attrs.WithCert(c)
}

// run keeps the revocation list and this host's certificate current
// until ctx ends: a new revocation list makes the reconciler look at
// every lease again; a certificate for this host's lease is published.
func (m *members) run(ctx context.Context, holder *lease.Holder, reconciler *mesh.Reconciler, log *slog.Logger) error {
	tick := time.NewTicker(memberEvery)
	defer tick.Stop()
	var saidExpiry time.Time
	for {
		if m.readRevocations(ctx, log) {
			reconciler.Pause(func() {})
		}
		c := m.readOwn(ctx, log)
		own := holder.Current()
		if c != nil && (c.Subnet != own.Subnet || c.IPv6Subnet != own.IPv6Subnet) {
			m.setNote(fmt.Sprintf("this host's certificate %s is for subnet %s, its lease is %s: sign a new one (`weftctl member request`)",
				c.Serial, c.Subnet, own.Subnet))
			c = nil
		}
		if holder.SetCert(c) && c != nil {
			log.Info("publishing this host's membership certificate", "serial", c.Serial, "not_after", c.NotAfter.UTC())
		}
		if c != nil && time.Until(c.NotAfter) < renewCertBefore && time.Since(saidExpiry) > 24*time.Hour {
			saidExpiry = time.Now()
			log.Warn("this host's membership certificate expires soon: run `weftctl member request` here and sign it with the CA",
				"serial", c.Serial, "not_after", c.NotAfter.UTC())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// readRevocations takes the revocation list in etcd; it reports whether
// the list in force changed.
func (m *members) readRevocations(ctx context.Context, log *slog.Logger) bool {
	text, ok, err := m.store.Membership(ctx, membership.RevocationsName)
	if err != nil || !ok {
		return false
	}
	changed, err := m.policy.TakeRevocations(text)
	if err != nil {
		m.warnOnce(log, "refusing the revocation list in etcd; keeping the one in force", err)
		return false
	}
	return changed
}

// readOwn reads and checks this host's certificate; nil when there is
// none or it does not check (the reason is kept for status and logged
// once).
func (m *members) readOwn(ctx context.Context, log *slog.Logger) *lease.Certificate {
	text, ok, err := m.store.Membership(ctx, membership.CertName(m.host.String()))
	if err != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.own // etcd away: what was read stands
	}
	if !ok {
		// None in etcd (never signed, or deleted): the one kept on disk,
		// checked again.
		if text, err = os.ReadFile(m.certFile); err != nil {
			m.setNote("no certificate for this host at membership/hosts/" + m.host.String() +
				": run `weftctl member request` here and `weftctl member sign` with the CA")
			return nil
		}
	}
	c, err := m.policy.OwnCertificate(text, m.host, m.id)
	if err != nil {
		m.warnOnce(log, "this host's certificate does not check; not publishing it", err)
		return nil
	}
	m.mu.Lock()
	fresh := m.own == nil || m.own.Text != c.Text
	m.own, m.note = c, ""
	m.mu.Unlock()
	if fresh && ok {
		if err := os.WriteFile(m.certFile, text, 0o600); err != nil {
			log.Warn("keeping this host's certificate on disk", "file", m.certFile, "err", err)
		}
	}
	return c
}

func (m *members) setNote(note string) {
	m.mu.Lock()
	m.own, m.note = nil, note
	m.mu.Unlock()
}

// warnOnce keeps err as the status note and logs it when it is new.
func (m *members) warnOnce(log *slog.Logger, msg string, err error) {
	m.mu.Lock()
	said := m.note == err.Error()
	m.own, m.note = nil, err.Error()
	m.mu.Unlock()
	if !said {
		log.Warn(msg, "err", err)
	}
}

// status is the membership section of /status; nil when off.
func (m *members) status() *status.Membership {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := &status.Membership{Mode: m.policy.Mode().String(), Note: m.note, Refused: m.policy.Refused()}
	if m.own != nil {
		s.Certificate, s.NotAfter = m.own.Serial, m.own.NotAfter.UTC().Format(time.RFC3339)
	}
	return s
}
