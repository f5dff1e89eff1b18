package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lab"
)

// firstPacketResult is the round-trip time of a ping to a container behind
// an idle on-demand peer (its first packet configures the peer on both
// ends and makes a handshake), next to the same ping once the peer is
// configured with a session.
type firstPacketResult struct {
	rounds         int
	idle, warm     []time.Duration
	lostFirstPings int
}

// firstPacketRounds is how many idle peers are pinged.
const firstPacketRounds = 40

// measureFirstPacket runs a 4-host userspace WireGuard lab with on-demand
// peers idle after 1 s; each round waits until host 1 has no peer
// configured, pings the next other host's container (one packet: the
// first to an idle peer) and then again (a configured peer).
func measureFirstPacket(weftd string) (firstPacketResult, error) {
	res := firstPacketResult{rounds: firstPacketRounds}
	l, err := startLab(lab.Options{Hosts: 4, Weftd: weftd, Backend: backends.WireGuard,
		Config: `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","Implementation":"userspace","OnDemandPeers":"on","OnDemandIdleAfter":1}}`})
	if err != nil {
		return res, err
	}
	defer l.Close()
	h1 := l.Hosts[0]
	rtt := func(to *lab.Host) (time.Duration, error) {
		out, err := lab.Exec(h1.Container, "ping", "-c", "1", "-W", "5", to.ContainerIP().String())
		if err != nil {
			return 0, err
		}
		m := pingTime.FindStringSubmatch(out)
		if m == nil {
			return 0, fmt.Errorf("no time in %q", out)
		}
		ms, _ := strconv.ParseFloat(m[1], 64)
		return time.Duration(ms * float64(time.Millisecond)), nil
	}
	for i := range firstPacketRounds {
		to := l.Hosts[1+i%3]
		const idleWait = 30 * time.Second
		deadline := time.Now().Add(idleWait)
		for {
			out, _ := l.HostExec(h1, "wg", "show", "weft-wg", "peers")
			if strings.TrimSpace(out) == "" {
				break
			}
			if time.Now().After(deadline) {
				return res, fmt.Errorf("host 1 still holds peers after %s: %s", idleWait, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		first, err := rtt(to)
		if err != nil {
			res.lostFirstPings++
			continue
		}
		warm, err := rtt(to)
		if err != nil {
			return res, fmt.Errorf("ping to a configured peer: %w", err)
		}
		res.idle, res.warm = append(res.idle, first), append(res.warm, warm)
	}
	return res, nil
}

// quantile is the q-quantile of d (nearest rank).
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func renderFirstPacket(r firstPacketResult) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	return fmt.Sprintf(`
%s First packet to an idle peer (userspace WireGuard, on-demand peers): %d rounds on a 4-host lab, each
after host 1's device has dropped every peer for idleness; one ping to another host's container
(the echo request configures the peer on the sender, the handshake initiation configures it on the
receiver, then the handshake runs), then the same ping again with the peer configured.

| ping | median | p99 | lost |
|---|---|---|---|
| first packet, idle peer | %s | %s | %d of %d |
| configured peer, live session | %s | %s | 0 |
`, measuredOn(time.Now()), r.rounds, ms(quantile(r.idle, 0.5)), ms(quantile(r.idle, 0.99)), r.lostFirstPings, r.rounds, ms(quantile(r.warm, 0.5)), ms(quantile(r.warm, 0.99)))
}
