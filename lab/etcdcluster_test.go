package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
)

// etcdClusterTTL is the lease TTL of the etcd cluster tests: short, so
// weftd renews every few seconds (a third of it) across each fault.
const etcdClusterTTL = 6 * time.Second

// startEtcdCluster is a 3-host host-gw lab on a 3-member etcd cluster,
// weftd given all three endpoints. These tests mostly wait (for
// elections, TTLs, keepalives), so they run in parallel with each other,
// each in namespaces of its own.
func startEtcdCluster(t *testing.T) *Lab {
	t.Helper()
	return startEtcdClusterTTL(t, etcdClusterTTL)
}

// startEtcdClusterTTL is startEtcdCluster with leases of ttl.
func startEtcdClusterTTL(t *testing.T, ttl time.Duration) *Lab {
	t.Helper()
	t.Parallel()
	return startCluster(t, Options{Hosts: 3, Backend: backends.HostGW, EtcdMembers: 3,
		WeftdArgs: []string{"-subnet-lease-ttl", ttl.String()}})
}

// heldLeases maps each host's lease key to the revision that created it:
// a lease that expired and was claimed again has a new one.
func heldLeases(t *testing.T, l *Lab) map[string]int64 {
	t.Helper()
	held := map[string]int64{}
	eventually(t, "every host's lease listed", 30*time.Second, func() error {
		records, _, err := l.Store().List(context.Background())
		if err != nil {
			return err
		}
		clear(held)
		for _, r := range records {
			for _, h := range l.Hosts {
				if r.Key == lease.SubnetKey(h.Subnet) && strings.Contains(string(r.Value), `"`+h.PublicIP.String()+`"`) {
					held[r.Key] = r.CreateRevision
				}
			}
		}
		if len(held) != len(l.Hosts) {
			return fmt.Errorf("%d of %d hosts' leases", len(held), len(l.Hosts))
		}
		return nil
	})
	return held
}

// checkLeasesKept checks every host still holds the lease it held before
// (same key, never deleted and claimed again) and its subnet file says so.
func checkLeasesKept(t *testing.T, l *Lab, before map[string]int64) {
	t.Helper()
	after := heldLeases(t, l)
	for key, rev := range before {
		if after[key] != rev {
			t.Errorf("lease %s was lost and claimed again (created at revision %d, now %d)", key, rev, after[key])
		}
	}
	for _, h := range l.Hosts {
		if env, err := lease.ReadSubnetFile(h.SubnetFile()); err != nil || env.Subnet != h.Subnet {
			t.Errorf("%s's subnet file says %v (%v), want %s", h.Name, env.Subnet, err, h.Subnet)
		}
	}
}

// leaseChange writes a new host's lease (subnet key, PublicIP ip) and
// waits until every running weftd has a route for it; it returns how long
// that took.
func leaseChange(t *testing.T, l *Lab, key string, ip netip.Addr) time.Duration {
	t.Helper()
	start := time.Now()
	value := fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"host-gw"}`, ip)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		_, err := l.Store().Create(ctx, key, []byte(value), time.Hour)
		return err == nil
	}); err != nil {
		t.Fatalf("writing lease %s: %v", key, err)
	}
	subnet := strings.Replace(key, "-", "/", 1)
	for _, h := range l.Hosts {
		if l.WeftdPID(h) == 0 {
			continue
		}
		eventually(t, "lease "+key+" reaches "+h.Name, 30*time.Second, func() error {
			if out, _ := routeTo(h, subnet); !strings.Contains(out, "via "+ip.String()) {
				return fmt.Errorf("no route to %s yet", subnet)
			}
			return nil
		})
	}
	return time.Since(start)
}

// waitLeader waits for a leader among the running members.
func waitLeader(t *testing.T, l *Lab) *Member {
	t.Helper()
	var leader *Member
	eventually(t, "an etcd leader", 30*time.Second, func() (err error) {
		leader, err = l.Leader(context.Background())
		return err
	})
	return leader
}

// TestEtcdClusterLeaderKilled kills the etcd leader while weftd renews and
// watches: no host loses its lease, a change made after the election
// reaches every host, and no ping is lost.
func TestEtcdClusterLeaderKilled(t *testing.T) {
	l := startEtcdCluster(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	before := heldLeases(t, l)
	window := 2*etcdClusterTTL + 4*time.Second
	pings := pingFor(h1, h2, window)
	leader := waitLeader(t, l)
	killed := time.Now()
	l.StopMember(leader, syscall.SIGKILL)
	next := waitLeader(t, l)
	election := time.Since(killed)
	took := leaseChange(t, l, freeKeys(l, 1)[0], l.underlayAddr(100))
	// Two TTLs with the old leader dead: every lease was renewed through
	// the new one, or it would have expired.
	time.Sleep(time.Until(killed.Add(2 * etcdClusterTTL)))
	checkLeasesKept(t, l, before)
	sent, lost := pings()
	if sent == 0 || lost > 0 {
		t.Errorf("%d of %d pings lost across the leader's death", lost, sent)
	}
	reliability(t, "etcd leader %s killed: %s leads after %s; a lease change reached all 3 hosts %s after; %d/%d pings lost; 3/3 leases kept over 2 TTLs",
		leader.Name, next.Name, election.Round(time.Millisecond), took.Round(time.Millisecond), lost, sent)
	if err := l.StartMember(leader); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdClusterMemberCutOff takes a member off the network (link down)
// and back: weftd goes on through the others, and its watch continues from
// the right revision, missing and replaying no change. A cut-off member's
// connections fail only when keepalive gives up on them (up to 15 s), and
// a renewal sent there waits until then: the leases here last 20 s (flannel's
// last a day).
func TestEtcdClusterMemberCutOff(t *testing.T) {
	l := startEtcdClusterTTL(t, 20*time.Second)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	before := heldLeases(t, l)
	keys := freeKeys(l, 3)
	offsets := map[*Host]int64{}
	for _, h := range l.Hosts {
		offsets[h] = h.LogOffset()
	}
	// Cut every member in turn, so whichever one a weftd's watch is on is
	// cut once; a change is made while each is away.
	pings := pingFor(h1, h2, 30*time.Second)
	for i, m := range l.Members {
		if err := l.CutMember(m); err != nil {
			t.Fatal(err)
		}
		took := leaseChange(t, l, keys[i], l.underlayAddr(100+i))
		if err := l.ReconnectMember(m); err != nil {
			t.Fatal(err)
		}
		reliability(t, "etcd member %s cut off: a lease change reached all 3 hosts in %s", m.Name, took.Round(time.Millisecond))
		eventually(t, m.Name+" back in the cluster", 30*time.Second, func() error {
			c, err := l.etcdClient()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			st, err := c.Status(ctx, m.Endpoint())
			if err != nil || st.Leader == 0 {
				return fmt.Errorf("status %v (%v)", st, err)
			}
			return nil
		})
	}
	sent, lost := pings()
	if sent == 0 || lost > 0 {
		t.Errorf("%d of %d pings lost while members were cut off", lost, sent)
	}
	checkLeasesKept(t, l, before)
	// Each change was applied once on each host: a watch that resumed
	// from the wrong revision would replay one (or miss it: leaseChange
	// waited for every route).
	for _, h := range l.Hosts {
		log := h.LogTailFrom(offsets[h])
		for _, key := range keys {
			if n := strings.Count(log, "leases_changed="+key); n != 1 {
				t.Errorf("%s applied the change of %s %d times, want once", h.Name, key, n)
			}
		}
	}
	reliability(t, "etcd members cut off one at a time: %d/%d pings lost, 3/3 leases kept, every change applied once on every host", lost, sent)
}

// TestEtcdClusterQuorumLost stops two of three members for longer than a
// renewal interval: traffic flows, weftd says so once and does not spin,
// and when quorum returns the leases are renewed and no subnet changes
// hands.
func TestEtcdClusterQuorumLost(t *testing.T) {
	l := startEtcdCluster(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	before := heldLeases(t, l)
	outage := 10 * time.Second // five renewal intervals (TTL/3)
	if soak() {
		outage = 60 * time.Second
	}
	offset := h1.LogOffset()
	pid := l.WeftdPID(h1)
	pings := pingFor(h1, h2, outage+4*time.Second)
	cpu0 := cpuTime(pid)
	l.StopMember(l.Members[1], syscall.SIGTERM)
	l.StopMember(l.Members[2], syscall.SIGTERM)
	time.Sleep(outage)
	cpu := cpuTime(pid) - cpu0
	for _, m := range l.Members[1:] {
		if err := l.StartMember(m); err != nil {
			t.Fatal(err)
		}
	}
	waitLeader(t, l)
	sent, lost := pings()
	if sent == 0 || lost > 0 {
		t.Errorf("%d of %d pings lost without quorum", lost, sent)
	}
	share := cpu.Seconds() / outage.Seconds()
	if share > 0.05 {
		t.Errorf("weftd used %.1f%% of a core waiting for quorum", 100*share)
	}
	// Renewed after quorum is back: two TTLs later the leases are the same.
	time.Sleep(2 * etcdClusterTTL)
	checkLeasesKept(t, l, before)
	log := h1.LogTailFrom(offset)
	said := outageLines(log)
	if said < 1 || said > 20 {
		t.Errorf("%d log lines about the outage; want it said, once per back-off step at most:\n%s", said, log)
	}
	reliability(t, "etcd quorum lost (2 of 3 members down) for %s: %d/%d pings lost, weftd CPU %.2fs (%.2f%% of a core), %d log lines about it, 3/3 leases kept",
		outage, lost, sent, cpu.Seconds(), 100*share, said)
}

// TestEtcdClusterRollingRestart restarts the members one by one, as an
// upgrade does: nothing is lost.
func TestEtcdClusterRollingRestart(t *testing.T) {
	l := startEtcdCluster(t)
	h1, h2 := l.Hosts[0], l.Hosts[1]
	before := heldLeases(t, l)
	keys := freeKeys(l, 3)
	start := time.Now()
	pings := pingFor(h1, h2, 30*time.Second)
	for i, m := range l.Members {
		l.StopMember(m, syscall.SIGTERM)
		if err := l.StartMember(m); err != nil {
			t.Fatal(err)
		}
		waitLeader(t, l)
		leaseChange(t, l, keys[i], l.underlayAddr(100+i))
	}
	elapsed := time.Since(start)
	sent, lost := pings()
	if sent == 0 || lost > 0 {
		t.Errorf("%d of %d pings lost in the rolling restart", lost, sent)
	}
	checkLeasesKept(t, l, before)
	reliability(t, "etcd rolling restart of 3 members in %s: %d/%d pings lost, 3/3 leases kept, a change after each restart reached every host",
		elapsed.Round(time.Millisecond), lost, sent)
}

// TestEtcdClusterClaimsDuringElection has 50 hosts claim subnets while the
// etcd leader is killed: no subnet is leased twice and every host ends with
// exactly one lease.
func TestEtcdClusterClaimsDuringElection(t *testing.T) {
	const claimers = 50
	l := startEtcdCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	raw, err := l.Store().Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := backends.ParseConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	leader := waitLeader(t, l)
	type claimed struct {
		ip     netip.Addr
		subnet netip.Prefix
		err    error
	}
	results := make(chan claimed, claimers)
	start := time.Now()
	for i := range claimers {
		ip := netip.AddrFrom4([4]byte{192, 168, 60, byte(10 + i)})
		go func() {
			// Each host its own client on all three members, as 50
			// weftds would have; they start over half a second.
			time.Sleep(time.Duration(i) * 10 * time.Millisecond)
			store, err := etcdstore.New(etcdstore.Options{Endpoints: l.EtcdEndpoints(), Dial: l.dialUnderlay})
			if err != nil {
				results <- claimed{ip: ip, err: err}
				return
			}
			defer store.Close()
			req := lease.ClaimRequest{Config: cfg, Attrs: lease.Attrs{PublicIP: ip, BackendType: backends.HostGW}, TTL: time.Hour}
			got, err := lease.ClaimWithRetry(ctx, store, req, lease.StartupRetry{First: 200 * time.Millisecond, Max: 2 * time.Second}, slog.New(slog.DiscardHandler))
			results <- claimed{ip: ip, subnet: got.Subnet, err: err}
		}()
	}
	time.Sleep(250 * time.Millisecond) // mid-way through the claims
	l.StopMember(leader, syscall.SIGKILL)
	bySubnet := map[netip.Prefix]netip.Addr{}
	for range claimers {
		r := <-results
		if r.err != nil {
			t.Errorf("host %s: %v", r.ip, r.err)
			continue
		}
		if other, dup := bySubnet[r.subnet]; dup {
			t.Errorf("subnet %s leased to %s and %s", r.subnet, other, r.ip)
		}
		bySubnet[r.subnet] = r.ip
	}
	took := time.Since(start)
	records, _, err := l.Store().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	perHost := map[string]int{}
	for _, r := range records {
		if ls, err := lease.DecodeLease(r.Key, r.Value); err == nil {
			perHost[ls.Attrs.PublicIP.String()]++
			if owner, ok := bySubnet[ls.Subnet]; ok && owner != ls.Attrs.PublicIP {
				t.Errorf("etcd gives %s to %s, the claimer was told %s", ls.Subnet, ls.Attrs.PublicIP, owner)
			}
		}
	}
	for ip, n := range perHost {
		if n != 1 {
			t.Errorf("host %s holds %d leases", ip, n)
		}
	}
	if len(records) != claimers+len(l.Hosts) {
		t.Errorf("%d leases in etcd, want %d (50 claimers and the lab's 3 hosts)", len(records), claimers+len(l.Hosts))
	}
	reliability(t, "%d hosts claiming while the etcd leader was killed: %d leases in %s, none twice, one per host",
		claimers, len(bySubnet), took.Round(time.Millisecond))
	if err := l.StartMember(leader); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdClusterRestoredFromSnapshot rebuilds the etcd cluster from a
// snapshot taken before a host joined: the store's revision goes back,
// the host missing from it claims its own subnet again, every other lease
// stays its host's, no subnet is held twice, traffic keeps flowing, and a
// change after the restore reaches every host.
func TestEtcdClusterRestoredFromSnapshot(t *testing.T) {
	t.Parallel()
	l := newLab(t, Options{Hosts: 3, Backend: backends.HostGW, EtcdMembers: 3, WeftdHosts: 2,
		WeftdArgs: []string{"-subnet-lease-ttl", etcdClusterTTL.String()}})
	ctx := context.Background()
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h1, h2, h3 := l.Hosts[0], l.Hosts[1], l.Hosts[2]
	file := t.TempDir() + "/etcd.snapshot"
	if err := l.Snapshot(ctx, file); err != nil {
		t.Fatal(err)
	}
	// h3 joins after the snapshot: its lease will be missing after the
	// restore, and the store's revision will be lower than weftd saw.
	if err := l.StartWeftd(h3); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, h3); err != nil {
		t.Fatal(err)
	}
	if err := l.AddContainer(h3); err != nil {
		t.Fatal(err)
	}
	leaseChange(t, l, freeKeys(l, 1)[0], l.underlayAddr(100))
	before := map[string]netip.Prefix{}
	for _, h := range l.Hosts {
		before[h.Name] = h.Subnet
	}
	// h1 and h2 are in the snapshot: their traffic must not notice. h3
	// is not: the others drop its route when they list the restored
	// store, until h3 has claimed its subnet again; that gap is reported.
	pings := pingFor(h1, h2, 20*time.Second)
	pingsToH3 := pingFor(h2, h3, 20*time.Second)
	start := time.Now()
	if err := l.RestoreEtcd(file); err != nil {
		t.Fatal(err)
	}
	restored := time.Since(start)
	eventually(t, "every host holds its own subnet in the restored etcd", 30*time.Second, func() error {
		records, _, err := l.Store().List(ctx)
		if err != nil {
			return err
		}
		holders := map[string]int{}
		for _, r := range records {
			ls, err := lease.DecodeLease(r.Key, r.Value)
			if err != nil {
				continue
			}
			holders[ls.Attrs.PublicIP.String()]++
			for _, h := range l.Hosts {
				if ls.Attrs.PublicIP == h.PublicIP && ls.Subnet != before[h.Name] {
					return fmt.Errorf("%s holds %s, had %s", h.Name, ls.Subnet, before[h.Name])
				}
			}
		}
		for _, h := range l.Hosts {
			if holders[h.PublicIP.String()] != 1 {
				return fmt.Errorf("%s holds %d leases", h.Name, holders[h.PublicIP.String()])
			}
		}
		return nil
	})
	healed := time.Since(start)
	took := leaseChange(t, l, freeKeys(l, 2)[1], l.underlayAddr(101))
	sent, lost := pings()
	if sent == 0 || lost > 0 {
		t.Errorf("%d of %d pings between hosts in the snapshot lost across the restore", lost, sent)
	}
	sent3, lost3 := pingsToH3()
	if sent3 == 0 || lost3 > 5 {
		t.Errorf("%d of %d pings to the host missing from the snapshot lost (1 s of them allowed while it claims again)", lost3, sent3)
	}
	eventually(t, "h2 -> h3 after the restore", 10*time.Second, func() error { return l.Ping(h2, h3) })
	for _, h := range []*Host{h1, h2, h3} {
		if env, err := lease.ReadSubnetFile(h.SubnetFile()); err != nil || env.Subnet != before[h.Name] {
			t.Errorf("%s's subnet file says %v (%v), want %s", h.Name, env.Subnet, err, before[h.Name])
		}
	}
	reliability(t, "etcd restored from an older snapshot (cluster rebuilt in %s): every host held its own subnet again %s after the restore began, a change reached all hosts %s later; %d/%d pings lost between hosts in the snapshot, %d/%d to the host that joined after it",
		restored.Round(time.Millisecond), healed.Round(time.Millisecond), took.Round(time.Millisecond), lost, sent, lost3, sent3)
}
