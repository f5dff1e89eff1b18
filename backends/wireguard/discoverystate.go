package wireguard

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
)

// discoveryState is what this backend knows of where hosts are seen: what
// the hosts' sightings said at the last whole apply (now, discovery.go
// computes it), and how each peer's received bytes moved (rx), from which
// Observe tells the live direct paths of a host behind NAT.
type discoveryState struct {
	now discovery
	rx  map[keys.Key]pathActivity
	// reached are the peers the last observation published as reached.
	reached map[string]bool
	// notEager are the peers behind NAT beyond the bound on eager ones.
	notEager int
	// failedRelays are the relays nothing came through, since when
	// (relayFailHold).
	failedRelays map[string]time.Time
	// turned is signalled when this host finds it is behind NAT or that
	// it is not (DiscoveryChanged).
	turned chan struct{}
}

// newDiscoveryState is a state with nothing seen yet.
func newDiscoveryState() discoveryState { return discoveryState{turned: make(chan struct{}, 1)} }

// Observation is what a host publishes of what its device sees.
type Observation struct {
	// Seen are the peers seen at another endpoint than their leases name
	// (WeftSeen).
	Seen []lease.Sighting
	// Reach are, on a host behind NAT, the peers with a live direct path
	// (WeftReach): a handshake within RejectAfter and a packet received
	// within liveWindow.
	Reach []string
	// BehindNAT says this host is behind NAT: what it reaches changes
	// within seconds and is worth publishing as often.
	BehindNAT bool
	// Relaying says this host relays pairs behind NAT: whether they try
	// their direct paths is worth publishing as often.
	Relaying bool
	// BackendData is what the lease publishes for this device now: it
	// says whether the host is behind NAT, which discovery may have
	// found out since the lease was written.
	BackendData json.RawMessage
}

// note takes up what the hosts' sightings say (found), and says once when
// this host turns out to be behind NAT (its peers see it elsewhere than
// its lease names: it then keeps every peer's path open with keepalives,
// as with -behind-nat) or no longer is.
func (s *discoveryState) note(found discovery, self lease.Lease, log *slog.Logger) {
	if found.self != s.now.self {
		if found.self.IsValid() {
			log.Info("this host is behind NAT: its peers see it at another endpoint than its lease names; "+
				"keeping its paths open with keepalives", "seen_at", found.self, "lease_public_ip", self.Attrs.PublicIP)
		} else {
			log.Info("this host's peers see it where its lease says (no NAT seen)")
		}
		s.signal()
	}
	s.now = found
}

// signal says that what this host publishes changed (DiscoveryChanged).
func (s *discoveryState) signal() {
	select {
	case s.turned <- struct{}{}:
	default: // one pending signal is enough
	}
}

// noteNotEager records how many peers behind NAT the bound on eager ones
// left for traffic only (capEager), and says so once when it begins.
func (s *discoveryState) noteNotEager(n int, log *slog.Logger) {
	if n > 0 && s.notEager == 0 {
		log.Warn("more peers are behind NAT than this host configures eagerly; the others are configured for traffic",
			"eager", maxEager, "not_eager", n)
	}
	s.notEager = n
}

// pathActivity is what observe last saw of a peer's path: its received
// bytes, when they last moved, and since when the path has been live
// without a break.
type pathActivity struct {
	rx              int64
	moved, liveFrom time.Time
	// via is the relay the peer went through at the look (empty:
	// direct), since when: bytes received then came through the relay,
	// so a pair leaving its relay counts its direct path live only once
	// bytes move after that, and a relay is judged only on what came
	// through it.
	via   string
	since time.Time
}

// relayGrace is how long a pair has to make its first handshake through
// a new relay (the ends' retries come every 5 s) before the relay is
// judged by what comes through it.
const relayGrace = 8 * time.Second

// relayFailHold is how long a relay through which nothing came is left
// out of what this host reaches: the pair settles on another, and comes
// back only after this, when the relay may be back.
const relayFailHold = 30 * time.Second

// reachHold is how long a direct path to a peer behind NAT must have been
// live before it is published as reached: two looks in a row, so one packet through a NAT
// mapping that then closes does not send a pair direct and back. A path
// that stops is dropped at the first look that finds it dead.
const reachHold = ObserveEvery

// ObserveEvery is how often weftd observes and publishes what a host
// behind NAT sees: its relays' liveness decides within seconds how its
// pairs go.
const ObserveEvery = 2 * time.Second

// observe reads what the device shows (dev) against the peers planned
// (want, held by holders): the peers seen elsewhere than their leases say
// and, behind NAT, the peers reached directly now. It remembers each
// peer's received bytes, so a path counts as live only once they move,
// and is published as reached once it has been live for reachHold.
func (s *discoveryState) observe(dev *wgtypes.Device, want []PeerSpec, holders map[keys.Key][]string, now time.Time) Observation {
	obs := Observation{Seen: sightings(peerStates(dev.Peers), want, now), BehindNAT: s.now.self.IsValid()}
	// The hold is for direct paths to peers behind NAT; a public peer (a
	// relay) is published at once, so a pair names its relay before its
	// own direct path could be held and does not go direct untried and
	// then through the relay.
	behindNAT, relayOf := map[string]bool{}, map[string]string{}
	for _, w := range want {
		if w.NAT || w.Relay != "" {
			behindNAT[w.Lease] = true
		}
		// A relayed peer's packets come through its relay: they say
		// nothing of a direct path.
		relayOf[w.Lease] = w.Relay
	}
	rx := make(map[keys.Key]pathActivity, len(dev.Peers))
	relayWorks, relayDead := map[string]bool{}, map[string]bool{}
	for _, p := range dev.Peers {
		k := keys.Key(p.PublicKey)
		held := holders[k]
		via := ""
		if len(held) == 1 {
			via = relayOf[held[0]]
		}
		a, ok := s.rx[k]
		if !ok || a.via != via {
			a = pathActivity{rx: p.ReceiveBytes, via: via, since: now} // a baseline: not live until it moves
		} else if a.rx != p.ReceiveBytes {
			a.rx, a.moved = p.ReceiveBytes, now
		}
		switch {
		case via == "":
		case !a.moved.IsZero() && now.Sub(a.moved) < liveWindow:
			relayWorks[via] = true
		case now.Sub(a.since) >= relayGrace:
			relayDead[via] = true
		}
		live := obs.BehindNAT && len(held) == 1 && !a.moved.IsZero() && now.Sub(a.moved) < liveWindow &&
			!p.LastHandshakeTime.IsZero() && now.Sub(p.LastHandshakeTime) < RejectAfter && !strings.HasPrefix(held[0], "peers/") && via == ""
		switch {
		case !live:
			a.liveFrom = time.Time{}
		case a.liveFrom.IsZero():
			a.liveFrom = now
		}
		rx[k] = a
		if live && (now.Sub(a.liveFrom) >= reachHold || s.reached[held[0]] || !behindNAT[held[0]]) {
			obs.Reach = append(obs.Reach, held[0])
		}
	}
	for r := range relayDead {
		if !relayWorks[r] {
			// Nothing came through the relay for a few keepalives from
			// any peer it carries: its forwarder is gone (its weftd
			// stopped) though its own WireGuard answers. It is left out
			// of what this host reaches for a while, so its pairs move
			// to another relay. (One dead peer among live ones is the
			// peer's trouble, not the relay's.)
			if s.failedRelays == nil {
				s.failedRelays = map[string]time.Time{}
			}
			s.failedRelays[r] = now
		}
	}
	for r, at := range s.failedRelays {
		if now.Sub(at) >= relayFailHold {
			delete(s.failedRelays, r)
		}
	}
	obs.Reach = slices.DeleteFunc(obs.Reach, func(r string) bool { _, failed := s.failedRelays[r]; return failed })
	s.rx = rx
	slices.Sort(obs.Reach)
	if len(obs.Reach) > lease.MaxSightings {
		obs.Reach = obs.Reach[:lease.MaxSightings]
	}
	s.reached = make(map[string]bool, len(obs.Reach))
	for _, r := range obs.Reach {
		s.reached[r] = true
	}
	return obs
}

// Observe reads the device and says what this host sees
// (backends.EndpointObserver).
func (b *Backend) Observe() (Observation, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.link.control == nil {
		return Observation{}, errors.New("not set up")
	}
	dev, err := b.link.control.Device(b.link.name)
	if err != nil {
		return Observation{}, err
	}
	now := time.Now()
	obs := b.found.observe(dev, b.last.want, b.last.holders, now)
	if len(b.relaying.served) > 0 {
		// A relay looks as often as a host behind NAT: whether its pairs
		// try their direct paths (TryDirect) is decided here.
		b.relaying.seenAt = make(map[string]netip.AddrPort, len(dev.Peers))
		for _, p := range dev.Peers {
			if held := b.last.holders[keys.Key(p.PublicKey)]; len(held) == 1 && p.Endpoint != nil {
				ep := p.Endpoint.AddrPort()
				b.relaying.seenAt[held[0]] = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
			}
		}
		b.publishRelaying(now)
		obs.Relaying = true
	}
	obs.BackendData = b.backendDataLocked()
	return obs, nil
}

// DiscoveryChanged is signalled when this host finds out it is behind NAT,
// or that it no longer is: what it publishes (its lease's NAT flag, the
// peers it reaches) is then worth observing at once, not at the next
// resync (backends.EndpointObserver).
func (b *Backend) DiscoveryChanged() <-chan struct{} { return b.found.turned }

// Relays are the peers this host reaches through a relay's forwarder
// now, by lease key, with the relay's lease key (a pair whose relay has
// published no port for it yet, or asks it to try its direct path, goes
// direct meanwhile).
func (b *Backend) Relays() map[string]string {
	return b.plannedBy(func(w PeerSpec) string { return w.Relay })
}

// Trials are the peers this host tries directly because their relay
// asked (TryDirect), by lease key, with the relay's lease key: "direct"
// only once both ends publish that they reach each other.
func (b *Backend) Trials() map[string]string {
	return b.plannedBy(func(w PeerSpec) string { return w.TrialBy })
}

// plannedBy maps each peer of the last whole apply for which relayOf
// names a relay to that relay.
func (b *Backend) plannedBy(relayOf func(PeerSpec) string) map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]string{}
	for _, w := range b.last.want {
		if r := relayOf(w); r != "" {
			out[w.Lease] = r
		}
	}
	return out
}
