package lease_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

func mustIdentity(t *testing.T) keys.Identity {
	t.Helper()
	id, _, err := keys.LoadOrCreateIdentity(t.TempDir()+"/identity", "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// signedValue is attrs signed by id under key, as a host writes it.
func signedValue(id keys.Identity, key string, attrs lease.Attrs) []byte {
	attrs.Identity = id.Public()
	return lease.Sign(id, key, attrs.Encode())
}

// TestSignedLease: a signed lease verifies from its raw bytes, flannel's
// fields first and byte for byte; the same value under another key (a copy
// under another subnet), a changed byte, a signature that is not the last
// field, and one made by another key than the WeftIdentity named are each
// refused; a value without a signature decodes as unsigned.
func TestSignedLease(t *testing.T) {
	id, other := mustIdentity(t), mustIdentity(t)
	attrs := hostAttrs(1)
	attrs.HostID = keys.HostID{1}
	const key = "10.5.1.0-24"
	value := signedValue(id, key, attrs)
	if !bytes.HasPrefix(value, []byte(`{"PublicIP":"`+attrs.PublicIP.String()+`","PublicIPv6":null,`)) || !bytes.HasSuffix(value, []byte(`"}`)) {
		t.Errorf("signed value %s: want flannel's fields first and the signature last", value)
	}
	l, err := lease.DecodeLease(key, value)
	if err != nil || !l.Signed || !l.SignedBy(id.Public()) || l.SignedBy(other.Public()) || l.Attrs.HostID != attrs.HostID {
		t.Fatalf("decoded %+v, %v: want signed by the host's identity only", l, err)
	}
	unsigned, err := lease.DecodeLease(key, attrs.Encode())
	if err != nil || unsigned.Signed {
		t.Errorf("an unsigned value: %+v %v, want it decoded as unsigned", unsigned, err)
	}
	forgedBy := func(k keys.Identity) []byte {
		a := attrs
		a.Identity = id.Public() // names the host's key, signed with another
		return lease.Sign(k, key, a.Encode())
	}
	changed := bytes.Replace(value, []byte(attrs.PublicIP.String()), []byte("192.0.2.99"), 1)
	for name, tt := range map[string]struct {
		key   string
		value []byte
	}{
		"copied under another subnet":           {"10.5.2.0-24", value},
		"a byte changed":                        {key, changed},
		"signed by a key other than it names":   {key, forgedBy(other)},
		"the signature not the last field":      {key, append(bytes.TrimSuffix(value, []byte("}")), []byte(`,"X":1}`)...)},
		"the signature twice":                   {key, append(bytes.TrimSuffix(value, []byte(`}`)), value[bytes.Index(value, []byte(`,"WeftSig"`)):]...)},
		"a signature that is not base64 of 64B": {key, []byte(`{"PublicIP":"192.168.50.1","PublicIPv6":null,"WeftSig":"abc"}`)},
	} {
		if l, err := lease.DecodeLease(tt.key, tt.value); err == nil || !errors.Is(err, lease.ErrBadLease) {
			t.Errorf("%s: decoded %+v (%v), want ErrBadLease", name, l, err)
		}
	}
}

// TestSignedOwnLease: issue 42, on real etcd and the in-memory store. A
// host with an identity takes a lease carrying its ID as its own only when
// its identity signed it:
//   - an etcd writer rewrites the host's lease in place keeping its ID
//     (another address, with a TTL as a daemon writes): the host keeps
//     running and takes its lease back (before, it stopped, "another live
//     host has this host's ID", and the write stuck);
//   - a reservation planted with the host's ID under a key that sorts
//     first is not adopted by the host's next claim (an option change
//     makes every host claim again): the host keeps its subnet;
//   - a lease with the host's ID signed by another key is not the host's;
//   - an unsigned lease with the host's ID is adopted only on the first
//     start after an upgrade (AdoptUnsigned), so a rolling upgrade keeps
//     every subnet.
func TestSignedOwnLease(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","Backend":{"Type":"host-gw"}}`)
		id, writer := mustIdentity(t), mustIdentity(t)
		attrs := hostAttrs(2)
		attrs.HostID = keys.HostID{4, 2}
		req := lease.ClaimRequest{Config: cfg, Attrs: attrs, TTL: time.Hour, Identity: id}
		own, err := lease.Claim(ctx, s, req)
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		holder := lease.NewHolder(s, req, own, time.Minute, testLogger(&logs))
		done := make(chan error, 1)
		go func() { done <- holder.Run(ctx) }()

		// The rewrite keeping the host's ID, unsigned and signed by the
		// writer's own key naming itself.
		forged := hostAttrs(1) // a lower address: before, the host gave way
		forged.HostID = attrs.HostID
		for _, value := range [][]byte{forged.Encode(), signedValue(writer, own.Key(), forged)} {
			rec, ok, err := s.Get(ctx, own.Key())
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if _, err := s.Replace(ctx, rec, value, time.Hour); err != nil {
				t.Fatal(err)
			}
			holder.Verify()
			waitFor(t, "the host's lease taken back", func() bool {
				r, ok, _ := s.Get(ctx, own.Key())
				l, err := lease.DecodeLease(own.Key(), r.Value)
				return ok && err == nil && l.SignedBy(id.Public()) && l.Attrs.PublicIP == attrs.PublicIP
			})
			select {
			case err := <-done:
				t.Fatalf("the holder stopped after a forged rewrite keeping the host's ID: %v\n%s", err, logs.String())
			default:
			}
		}
		if holder.Conflicts() < 2 {
			t.Errorf("%d foreign writes counted, want 2", holder.Conflicts())
		}

		// A reservation planted with the host's ID, sorting first, and a
		// lease with the host's ID signed by the writer: the host's next
		// claim keeps its own subnet.
		planted := freeKeys(t, s, 10, 4)
		if _, err := s.Create(ctx, planted[0], forged.Encode(), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Create(ctx, planted[1], signedValue(writer, planted[1], forged), time.Hour); err != nil {
			t.Fatal(err)
		}
		again, err := lease.Claim(ctx, s, req)
		if err != nil || again.Subnet != own.Subnet {
			t.Errorf("claim after planted leases with the host's ID: %s %v, want %s kept", again.Subnet, err, own.Subnet)
		}

		// The first start after an upgrade adopts the host's unsigned
		// lease, and signs it.
		upgraded := hostAttrs(3)
		upgraded.HostID = keys.HostID{7}
		old, err := s.Create(ctx, planted[2], upgraded.Encode(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		// Not on any later start: an unsigned lease with a host's ID is
		// anyone's to write.
		later := hostAttrs(4)
		later.HostID = keys.HostID{8}
		unsigned, err := s.Create(ctx, planted[3], later.Encode(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if l, err := lease.Claim(ctx, s, lease.ClaimRequest{Config: cfg, Attrs: later, TTL: time.Hour, Identity: mustIdentity(t)}); err != nil ||
			l.Key() == unsigned.Key {
			t.Errorf("without AdoptUnsigned, the unsigned lease with the host's ID was adopted: %s %v", l.Key(), err)
		}
		up := lease.ClaimRequest{Config: cfg, Attrs: upgraded, TTL: time.Hour, Identity: mustIdentity(t), AdoptUnsigned: true}
		l, err := lease.Claim(ctx, s, up)
		if err != nil || l.Key() != old.Key {
			t.Errorf("the first start after an upgrade: %s %v, want the host's unsigned lease %s kept", l.Key(), err, old.Key)
		}
		if r, _, _ := s.Get(ctx, old.Key); !strings.Contains(string(r.Value), `"WeftSig"`) {
			t.Errorf("the adopted lease was not signed: %s", r.Value)
		}
	})
}

// signedAt is attrs signed by id under key as if at t.
func signedAt(id keys.Identity, key string, attrs lease.Attrs, t time.Time) []byte {
	attrs.Identity, attrs.SignedAt = id.Public(), t.Unix()
	return lease.Sign(id, key, attrs.Encode())
}

// TestSignedReplay: issue 42, on real etcd and the in-memory store. A
// watcher that took a value signed by a host refuses an older value
// signed by the same host (a replay of what the host wrote before) and
// keeps the newer; a value signed longer ago than MaxSignedAge, or in the
// future beyond ClockSkew, is refused outright; a value signed within
// ClockSkew of the newest is taken (clocks drift).
func TestSignedReplay(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx := context.Background()
		var logs syncBuffer
		w := startWatcher(t, s, &logs)
		id := mustIdentity(t)
		const key = "10.5.1.0-24"
		old, newer := hostAttrs(1), hostAttrs(2)
		now := time.Now()
		if _, err := s.Create(ctx, key, signedAt(id, key, old, now.Add(-time.Hour)), time.Hour); err != nil {
			t.Fatal(err)
		}
		replace := func(value []byte) {
			t.Helper()
			cur, _, err := s.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Replace(ctx, cur, value, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		holds := func(want lease.Attrs) func() bool {
			return func() bool { l, ok := w.Lease(key); return ok && l.Attrs.PublicIP == want.PublicIP }
		}
		waitFor(t, "the first value", holds(old))
		replace(signedAt(id, key, newer, now))
		waitFor(t, "the newer value", holds(newer))
		replace(signedAt(id, key, old, now.Add(-time.Hour)))
		waitFor(t, "the replay refused", func() bool { return strings.Contains(logs.String(), "refusing an older signed value") })
		if l, ok := w.Lease(key); !ok || l.Attrs.PublicIP != newer.PublicIP {
			t.Errorf("after a replay the watcher holds %+v (%v), want the newer value kept", l.Attrs, ok)
		}
		// Within the clock skew of the newest: taken.
		drift := hostAttrs(3)
		replace(signedAt(id, key, drift, now.Add(-time.Minute)))
		waitFor(t, "a value signed a minute before the newest", holds(drift))

		// Too old, or from the future, under another key: refused.
		for k, at := range map[string]time.Time{"10.5.2.0-24": now.Add(-lease.MaxSignedAge - time.Hour), "10.5.3.0-24": now.Add(time.Hour)} {
			if _, err := s.Create(ctx, k, signedAt(mustIdentity(t), k, hostAttrs(4), at), time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, "both refused", func() bool {
			return strings.Contains(logs.String(), "longer ago than") && strings.Contains(logs.String(), "in the future")
		})
		for _, k := range []string{"10.5.2.0-24", "10.5.3.0-24"} {
			if _, ok := w.Lease(k); ok {
				t.Errorf("the watcher took %s", k)
			}
		}
	})
}
