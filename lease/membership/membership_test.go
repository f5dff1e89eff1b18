package membership_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/etcdtest"
	"github.com/weftnet/weft/lease/leasetest"
	"github.com/weftnet/weft/lease/membership"
)

// store is what the tests need of a store: the lease store and the
// membership records.
type store interface {
	lease.Store
	membership.Store
	lease.PeerStore
}

// stores runs f against a real etcd and against the in-memory fake.
func stores(t *testing.T, f func(t *testing.T, s store)) {
	t.Run("etcd", func(t *testing.T) {
		srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		s, err := etcdstore.New(etcdstore.Options{Endpoints: []string{srv.Endpoint}, Prefix: "/weft-test/" + t.Name()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		f(t, s)
	})
	t.Run("fake", func(t *testing.T) { f(t, leasetest.New(nil)) })
}

func newIdentity(t *testing.T) keys.Identity {
	t.Helper()
	id, _, err := keys.LoadOrCreateIdentity(filepath.Join(t.TempDir(), "identity"), "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func newCA(t *testing.T) keys.Identity {
	t.Helper()
	ca, err := keys.CreateCA(filepath.Join(t.TempDir(), "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newPolicy(t *testing.T, mode membership.Mode, state string, trusted ...keys.Identity) *membership.Policy {
	t.Helper()
	var keysTrusted []keys.IdentityKey
	for _, ca := range trusted {
		keysTrusted = append(keysTrusted, ca.Public())
	}
	p, err := membership.NewPolicy(mode, keysTrusted, state, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// host is one weft host of the tests: its identity, ID and subnet.
type host struct {
	id     keys.Identity
	hostID keys.HostID
	subnet netip.Prefix
}

func newHost(t *testing.T, n byte) host {
	return host{id: newIdentity(t), hostID: keys.HostID{n}, subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, n, 0}), 24)}
}

// certify is the CA's certificate for h, valid for a day from now plus shift.
func certify(t *testing.T, ca keys.Identity, h host, subnet netip.Prefix, shift time.Duration) *lease.Certificate {
	t.Helper()
	now := time.Now().Add(shift)
	c, err := lease.SealCertificate(ca, lease.Certificate{Serial: lease.NewSerial(), HostID: h.hostID, Identity: h.id.Public(),
		Subnet: subnet, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// leaseOf is h's lease at subnet, signed by signer and carrying cert, as
// another host decodes it from the store.
func leaseOf(t *testing.T, h host, subnet netip.Prefix, signer keys.Identity, cert *lease.Certificate) *lease.Lease {
	t.Helper()
	attrs := lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{192, 168, 1, h.hostID[0]}), BackendType: "wireguard",
		HostID: h.hostID, Identity: signer.Public(), SignedAt: time.Now().Unix()}.WithCert(cert)
	key := lease.SubnetKey(subnet)
	l, err := lease.DecodeLease(key, lease.Sign(signer, key, attrs.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	return &l
}

// TestEnforceAdmitsCertifiedLeasesOnly: in enforce mode a lease is a peer
// only when a trusted CA certified its host ID, identity and subnet, within
// the certificate's validity and not revoked. An etcd writer's own lease
// (no certificate), a compromised member's lease for another member's
// subnet, a certificate copied into a lease with another identity, one
// from an untrusted CA, an expired one, an unsigned (flannel) lease and a
// revoked certificate or identity are each refused; warn mode admits them
// all and counts them.
func TestEnforceAdmitsCertifiedLeasesOnly(t *testing.T) {
	ca, rogue := newCA(t), newCA(t)
	a, b, writer := newHost(t, 1), newHost(t, 2), newHost(t, 3)
	certA := certify(t, ca, a, a.subnet, 0)
	policy := newPolicy(t, membership.Enforce, filepath.Join(t.TempDir(), "state"), ca)
	if why := policy.Admit(leaseOf(t, a, a.subnet, a.id, certA)); why != "" {
		t.Fatalf("a certified lease refused: %s", why)
	}
	unsigned := func() *lease.Lease {
		l, err := lease.DecodeLease(lease.SubnetKey(b.subnet), lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.9")}.Encode())
		if err != nil {
			t.Fatal(err)
		}
		return &l
	}()
	for name, tt := range map[string]struct {
		l    *lease.Lease
		want string
	}{
		"a writer's own lease, no certificate":        {leaseOf(t, writer, writer.subnet, writer.id, nil), "no membership certificate"},
		"a member claims another member's subnet":     {leaseOf(t, a, b.subnet, a.id, certA), "for subnet " + a.subnet.String()},
		"a member's certificate under another key":    {leaseOf(t, a, a.subnet, writer.id, certA), "not signed by it"},
		"a certificate from a CA not trusted":         {leaseOf(t, writer, writer.subnet, writer.id, certify(t, rogue, writer, writer.subnet, 0)), "not a CA in -membership-ca"},
		"an expired certificate":                      {leaseOf(t, b, b.subnet, b.id, certify(t, ca, b, b.subnet, -48*time.Hour)), "expired"},
		"an unsigned lease (a flannel host or older)": {unsigned, "unsigned"},
	} {
		if why := policy.Admit(tt.l); !strings.Contains(why, tt.want) {
			t.Errorf("%s: admitted with %q, want refused with %q", name, why, tt.want)
		}
	}

	// Revoked: by certificate serial, then by identity; an older list is
	// not taken after a newer one.
	revoke := func(serial uint64, r membership.Revocations) []byte {
		r.Serial, r.Issued = serial, time.Now()
		text, err := r.Seal(ca)
		if err != nil {
			t.Fatal(err)
		}
		return text
	}
	first := revoke(1, membership.Revocations{Certs: []string{certA.Serial}})
	if changed, err := policy.TakeRevocations(first); err != nil || !changed {
		t.Fatalf("revocation list 1: %v %v", changed, err)
	}
	if why := policy.Admit(leaseOf(t, a, a.subnet, a.id, certA)); !strings.Contains(why, "revoked") {
		t.Errorf("a revoked certificate admitted (%q)", why)
	}
	newCert := certify(t, ca, a, a.subnet, 0)
	if why := policy.Admit(leaseOf(t, a, a.subnet, a.id, newCert)); why != "" {
		t.Errorf("a new certificate refused after the old one's revocation: %s", why)
	}
	if _, err := policy.TakeRevocations(revoke(2, membership.Revocations{Identities: []keys.IdentityKey{a.id.Public()}})); err != nil {
		t.Fatal(err)
	}
	if why := policy.Admit(leaseOf(t, a, a.subnet, a.id, newCert)); !strings.Contains(why, "identity") {
		t.Errorf("a revoked identity admitted (%q)", why)
	}
	if _, err := policy.TakeRevocations(first); err == nil || !strings.Contains(err.Error(), "lower") {
		t.Errorf("an older revocation list taken after a newer one: %v", err)
	}
	forged := bytes.Replace(first, []byte("serial 1"), []byte("serial 9"), 1)
	if _, err := policy.TakeRevocations(forged); err == nil {
		t.Error("a revocation list changed after it was signed was taken")
	}
	if _, err := policy.TakeRevocations(func() []byte {
		text, _ := membership.Revocations{Serial: 5}.Seal(rogue)
		return text
	}()); err == nil {
		t.Error("a revocation list from a CA not trusted was taken")
	}

	warn := newPolicy(t, membership.Warn, filepath.Join(t.TempDir(), "state"), ca)
	if why := warn.Admit(leaseOf(t, writer, writer.subnet, writer.id, nil)); why != "" || warn.Refused() != 1 {
		t.Errorf("warn mode: %q, %d counted; want admitted and counted", why, warn.Refused())
	}
}

// TestCertifiedLeaseRoundTrip: a host's certificate travels in its signed
// lease through the store, and a value whose certificate was changed after
// signing does not decode.
func TestCertifiedLeaseRoundTrip(t *testing.T) {
	ca := newCA(t)
	a := newHost(t, 1)
	cert := certify(t, ca, a, a.subnet, 0)
	stores(t, func(t *testing.T, s store) {
		cfg, err := lease.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`))
		if err != nil {
			t.Fatal(err)
		}
		attrs := lease.Attrs{PublicIP: netip.MustParseAddr("192.168.1.1"), BackendType: "wireguard", HostID: a.hostID}.WithCert(cert)
		own, err := lease.Claim(context.Background(), s, lease.ClaimRequest{Config: cfg, Attrs: attrs, Previous: a.subnet, Identity: a.id})
		if err != nil {
			t.Fatal(err)
		}
		rec, ok, err := s.Get(context.Background(), own.Key())
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		l, err := lease.DecodeLease(rec.Key, rec.Value)
		if err != nil || l.Attrs.Cert() == nil || l.Attrs.Cert().Serial != cert.Serial {
			t.Fatalf("decoded %v, %v: want the certificate back", l.Attrs.Cert(), err)
		}
		policy := newPolicy(t, membership.Enforce, filepath.Join(t.TempDir(), "state"), ca)
		if why := policy.Admit(&l); why != "" {
			t.Errorf("the stored certified lease is refused: %s", why)
		}
	})
}

// TestConfigSeal: in enforce mode a host runs only a config a trusted CA
// sealed, byte for byte, with a serial no lower than the highest it took,
// kept on disk across restarts. An unsealed config, a config changed after
// its seal, a seal by another CA, and an old config put back with its old
// seal are each refused with lease.ErrInvalidConfig (a starting host
// waits; a running one keeps its config).
func TestConfigSeal(t *testing.T) {
	ca, rogue := newCA(t), newCA(t)
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		state := filepath.Join(t.TempDir(), "membership-state")
		gate := &membership.ConfigGate{Store: s, Members: s, Policy: newPolicy(t, membership.Enforce, state, ca)}
		put := func(config string, signer keys.Identity, serial uint64) {
			t.Helper()
			if err := s.PutConfig(ctx, []byte(config)); err != nil {
				t.Fatal(err)
			}
			if serial == 0 {
				return
			}
			seal, err := membership.SealConfig(signer, []byte(config), serial)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutMembership(ctx, membership.ConfigSealName, seal); err != nil {
				t.Fatal(err)
			}
		}
		refused := func(what, want string) {
			t.Helper()
			if _, err := gate.Config(ctx); !errors.Is(err, lease.ErrInvalidConfig) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want refused with %q", what, err, want)
			}
		}
		const wg = `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"},"StrictEncryption":true}`
		const clear = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
		put(wg, ca, 0)
		refused("an unsealed config", "no CA seal")
		put(wg, ca, 1)
		if raw, err := gate.Config(ctx); err != nil || string(raw) != wg {
			t.Fatalf("the sealed config: %s %v", raw, err)
		}
		put(clear, ca, 0) // the seal stays wg's
		refused("a config changed after its seal", "not of the stored config's bytes")
		put(clear, rogue, 7)
		refused("a config sealed by another CA", "not a CA in -membership-ca")
		put(clear, ca, 2)
		if raw, err := gate.Config(ctx); err != nil || string(raw) != clear {
			t.Fatalf("the newer sealed config: %s %v", raw, err)
		}
		// An etcd writer puts the old config back with its old seal; a
		// restarted host (a new policy over the same state file) refuses
		// it too.
		put(wg, ca, 1)
		refused("an old config put back", "lower than 2")
		gate.Policy = newPolicy(t, membership.Enforce, state, ca)
		refused("an old config put back, after a restart", "lower than 2")

		warn := &membership.ConfigGate{Store: s, Members: s, Policy: newPolicy(t, membership.Warn, filepath.Join(t.TempDir(), "s"), ca)}
		put(clear, ca, 0)
		if raw, err := warn.Config(ctx); err != nil || string(raw) != clear {
			t.Errorf("warn mode: %s %v, want the config", raw, err)
		}
	})
}

// TestOutsidePeerSeal: in enforce mode an outside peer is configured only
// with a trusted CA's seal of its own fields: an unsealed peer, one whose
// key or endpoint was changed after sealing, and one sealed by another CA
// are refused, on a real etcd through the peer watcher's filter.
func TestOutsidePeerSeal(t *testing.T) {
	ca, rogue := newCA(t), newCA(t)
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		policy := newPolicy(t, membership.Enforce, filepath.Join(t.TempDir(), "state"), ca)
		key, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		peer := func(name string, n byte) lease.OutsidePeer {
			return lease.OutsidePeer{Name: name, PublicKey: key.Public().String(), Address: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 6, 0, n}), 32)}
		}
		sealed := func(p lease.OutsidePeer, signer keys.Identity) lease.OutsidePeer {
			if p.Seal, err = membership.SealPeer(signer, p); err != nil {
				t.Fatal(err)
			}
			return p
		}
		good := sealed(peer("laptop", 1), ca)
		moved := sealed(peer("moved", 2), ca)
		moved.Endpoint = netip.MustParseAddrPort("192.0.2.1:51820")
		for _, p := range []lease.OutsidePeer{good, peer("unsealed", 3), moved, sealed(peer("rogue", 4), rogue)} {
			if err := s.AddPeer(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		w := lease.NewPeerWatcher(s, slog.New(slog.DiscardHandler))
		w.Admit = policy.AdmitPeer
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go w.Run(ctx)
		deadline := time.Now().Add(5 * time.Second)
		for len(w.Peers()) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := w.Peers(); len(got) != 1 || got[0].Name != "laptop" {
			t.Errorf("peers configured: %+v, want the sealed laptop only", got)
		}
		if policy.Refused() < 3 {
			t.Errorf("refused %d peers, want 3", policy.Refused())
		}
	})
}

// TestOwnCertificate: a host takes a certificate from etcd as its own only
// when a trusted CA made it for its host ID and identity.
func TestOwnCertificate(t *testing.T) {
	ca, rogue := newCA(t), newCA(t)
	a, b := newHost(t, 1), newHost(t, 2)
	policy := newPolicy(t, membership.Enforce, filepath.Join(t.TempDir(), "state"), ca)
	if c, err := policy.OwnCertificate([]byte(certify(t, ca, a, a.subnet, 0).Text), a.hostID, a.id.Public()); err != nil || c == nil {
		t.Fatalf("own certificate: %v", err)
	}
	if _, err := policy.OwnCertificate([]byte(certify(t, ca, b, b.subnet, 0).Text), a.hostID, a.id.Public()); err == nil {
		t.Error("another host's certificate taken as this host's")
	}
	if _, err := policy.OwnCertificate([]byte(certify(t, rogue, a, a.subnet, 0).Text), a.hostID, a.id.Public()); err == nil {
		t.Error("a certificate from a CA not trusted taken")
	}
}
