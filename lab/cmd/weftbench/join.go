package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lab"
	"github.com/weftnet/weft/lease"
)

// joinResult is n hosts claiming a subnet at the same moment.
type joinResult struct {
	hosts    int
	took     time.Duration
	p50, p99 time.Duration // one claim, start to lease held
	distinct int           // distinct subnets handed out
	inEtcd   int           // leases etcd holds afterwards
	failed   int
}

// measureJoin has n simulated hosts (no namespaces: the claim is the
// control-plane work a joining host does) claim at once against the lab's
// etcd, each through the same code weftd runs, and checks that every claim
// got its own subnet and that etcd holds exactly those leases.
func measureJoin(n int) (joinResult, error) {
	res := joinResult{hosts: n}
	self, _ := os.Executable()
	// A /16 of /24s leaves 255 subnets: 200 joiners fill most of it, the
	// hard case for random allocation.
	l, err := lab.New(lab.Options{Hosts: 2, Backend: backends.HostGW, Self: self})
	if err != nil {
		return res, err
	}
	defer l.Close()
	ctx := context.Background()
	if err := l.PutConfig(ctx, l.Config()); err != nil {
		return res, err
	}
	cfg, err := backends.ParseConfig([]byte(l.Config()))
	if err != nil {
		return res, err
	}
	got := make([]lease.Lease, n)
	errs := make([]error, n)
	took := make([]time.Duration, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			attrs := lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{172, 20, byte(i / 250), byte(1 + i%250)}), BackendType: backends.HostGW}
			<-start
			t0 := time.Now()
			got[i], errs[i] = lease.Claim(ctx, l.Store(), lease.ClaimRequest{Config: cfg, Attrs: attrs})
			took[i] = time.Since(t0)
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	res.took = time.Since(t0)
	subnets := map[netip.Prefix]bool{}
	for i := range n {
		if errs[i] != nil {
			res.failed++
			continue
		}
		subnets[got[i].Subnet] = true
	}
	res.distinct = len(subnets)
	records, _, err := l.Store().List(ctx)
	if err != nil {
		return res, err
	}
	res.inEtcd = len(records)
	slices.Sort(took)
	res.p50, res.p99 = took[n/2], took[min(n-1, n*99/100)]
	fmt.Printf("join %d hosts: %s, %d distinct subnets, %d leases in etcd, %d failed\n", n, res.took.Round(time.Millisecond), res.distinct, res.inEtcd, res.failed)
	if res.failed > 0 || res.distinct != n || res.inEtcd != n {
		return res, fmt.Errorf("%d hosts joined: %d distinct subnets, %d leases in etcd, %d failed: %v", n, res.distinct, res.inEtcd, res.failed, firstErr(errs))
	}
	return res, nil
}

func firstErr(errs []error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

func renderJoin(r joinResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, `
## Joining at once

%s %d simulated hosts claim a subnet in the same instant against the lab's etcd (one etcd server
process, one client), each through lease.Claim — the code weftd runs at start — in a %s Network of
/24s (255 subnets, so the pool ends up %d%% full and random picks collide).

| hosts | all leased in | claims per second | one claim p50 | one claim p99 | distinct subnets | leases in etcd | failed |
|---|---|---|---|---|---|---|---|
| %d | %s | %.0f | %s | %s | %d | %d | %d |
`, measuredOn(time.Now()), r.hosts, lab.DefaultNetwork, r.hosts*100/255, r.hosts, ms(r.took), float64(r.hosts)/r.took.Seconds(), ms(r.p50), ms(r.p99), r.distinct, r.inEtcd, r.failed)
	return b.String()
}
