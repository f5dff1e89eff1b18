package lease_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/lease"
)

// TestHolderSetBackendData: a host that finds out it is behind NAT says so
// in its own lease's BackendData; the holder rewrites the backend's data
// where the lease names that backend (its BackendType, or its path in
// WeftAlso during a switch) and leaves a lease without it alone.
func TestHolderSetBackendData(t *testing.T) {
	stores(t, func(t *testing.T, s lease.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cfg := mustConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`)
		attrs := hostAttrs(9)
		attrs.BackendType, attrs.BackendData = "wireguard", json.RawMessage(`{"PublicKey":"k","Port":51820}`)
		req := lease.ClaimRequest{Config: cfg, Attrs: attrs, TTL: time.Hour}
		l, err := lease.Claim(ctx, s, req)
		if err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		holder := lease.NewHolder(s, req, l, time.Minute, testLogger(&logs))
		done := make(chan struct{})
		go func() { defer close(done); holder.Run(ctx) }()
		defer func() { cancel(); <-done }()
		nat := json.RawMessage(`{"PublicKey":"k","Port":51820,"NAT":true}`)
		if !holder.SetBackendData("wireguard", nat) {
			t.Fatal("SetBackendData reports no change")
		}
		if holder.SetBackendData("wireguard", nat) {
			t.Error("SetBackendData of the same data reports a change")
		}
		if holder.SetBackendData("vxlan", json.RawMessage(`{"VNI":1}`)) {
			t.Error("SetBackendData of a backend the lease does not name reports a change")
		}
		waitFor(t, "the lease rewritten", func() bool {
			rec, ok, err := s.Get(ctx, l.Key())
			return err == nil && ok && strings.Contains(string(rec.Value), `"NAT":true`) && !strings.Contains(string(rec.Value), "VNI")
		})
	})
}
