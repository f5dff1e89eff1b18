package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/lease"
)

// publishObservations publishes in this host's lease, when it changed,
// where its WireGuard device sees peers whose packets come from another
// endpoint than their leases name (WeftSeen) and, behind NAT, which peers
// it reaches directly (WeftReach): the other hosts learn from it where
// those peers are reached, each host where its own packets leave its NAT,
// and a pair behind NATs whether it goes direct or through which relay
// (see lease.Sighting). It looks every resync interval, every
// wireguard.ObserveEvery behind NAT, and at once when the host finds out it is
// behind NAT or no longer is: its peers go direct only once what it
// reaches is published, and a lease rewritten late would change their
// paths after they were up.
func publishObservations(ctx context.Context, observer backends.EndpointObserver, holder *lease.Holder,
	every time.Duration, log *slog.Logger) error {
	wait := every
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		case <-observer.DiscoveryChanged():
		}
		obs, err := observer.Observe()
		if err != nil {
			continue
		}
		wait = every
		if obs.BehindNAT || obs.Relaying {
			wait = min(every, wireguard.ObserveEvery)
		}
		if obs.BackendData != nil && holder.SetBackendData(backends.WireGuard, obs.BackendData) {
			log.Info("publishing this host's WireGuard data: whether it is behind NAT", "behind_nat", obs.BehindNAT)
		}
		if holder.SetSeen(obs.Seen, obs.Reach) {
			log.Info("publishing where this host sees peers behind NAT, and what it reaches", "sightings", len(obs.Seen),
				"reach", obs.Reach)
		}
	}
}
