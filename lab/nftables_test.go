package lab

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nftConfig is the lab's host-gw network with "EnableNFTables" set.
func nftConfig(on bool) string {
	return fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"host-gw"},"EnableNFTables":%t}`, DefaultNetwork, on)
}

// checkNFTMode checks that h's firewall is in one mode only: weft's
// nftables table with flannel's rules (nft true) and no iptables chain of
// weft's, or the other way round.
func checkNFTMode(t *testing.T, h *Host, nft bool) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s in nftables mode %v", h.Name, nft), 15*time.Second, func() error {
		table, _ := Exec(h.Name, "nft", "list", "ruleset")
		save, _ := Exec(h.Name, "iptables-save")
		hasTable, hasChains := strings.Contains(table, "table ip weft-ipv4"), strings.Contains(save, "WEFT-")
		if !nft {
			if hasTable || !hasChains {
				return fmt.Errorf("nftables table %v, iptables chains %v:\n%s\n%s", hasTable, hasChains, table, save)
			}
			return nil
		}
		if hasChains {
			return fmt.Errorf("iptables chains left:\n%s", save)
		}
		for _, want := range []string{
			"chain forward {",
			"type filter hook forward priority filter; policy accept;",
			"ip saddr 10.5.0.0/16 accept",
			"ip daddr 10.5.0.0/16 accept",
			"chain postrtg {",
			"type nat hook postrouting priority srcnat; policy accept;",
			"meta mark & 0x00004000 == 0x00004000 return",
			fmt.Sprintf("ip saddr %s ip daddr 10.5.0.0/16 return", h.Subnet),
			fmt.Sprintf("ip saddr != 10.5.0.0/16 ip daddr %s return", h.Subnet),
			"ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
			"ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
		} {
			if !strings.Contains(table, want) {
				return fmt.Errorf("no %q in\n%s", want, table)
			}
		}
		return nil
	})
}

// TestNFTablesMasqAndSwitch: with "EnableNFTables": true weft keeps its
// masquerade and forward rules in its own nftables table (as `nft list
// ruleset` shows them), masquerade works, a table deleted by hand comes
// back, and switching to iptables and back leaves nothing of the other
// mode; `weftctl cleanup` removes both.
func TestNFTablesMasqAndSwitch(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Config: nftConfig(true), WeftdArgs: []string{"-ip-masq", "-iptables-resync", "1"}})
	ctx := context.Background()
	h1, h2 := l.Hosts[0], l.Hosts[1]
	outside := netip.AddrPortFrom(l.underlayAddr(1), 7000)
	masq := func(t *testing.T) {
		checkMasquerade(t, l, h1, outside, h1.PublicIP, netip.AddrPortFrom(h2.ContainerIP(), 7001), h2, h1.ContainerIP())
	}
	for _, h := range l.Hosts {
		checkNFTMode(t, h, true)
	}
	t.Run("leaving the Network is masqueraded, inside it is not", masq)

	t.Run("a table deleted by hand comes back", func(t *testing.T) {
		if _, err := Exec(h1.Name, "nft", "delete", "table", "ip", "weft-ipv4"); err != nil {
			t.Fatal(err)
		}
		checkNFTMode(t, h1, true)
	})

	t.Run("switching to iptables and back leaves nothing of the other mode", func(t *testing.T) {
		for _, mode := range []bool{false, true} {
			if err := l.PutConfig(ctx, nftConfig(mode)); err != nil {
				t.Fatal(err)
			}
			for _, h := range l.Hosts {
				restartWeftd(t, l, h)
				checkNFTMode(t, h, mode)
			}
			masq(t)
		}
	})

	t.Run("weftctl cleanup removes both modes", func(t *testing.T) {
		l.StopWeftd(h1, syscall.SIGTERM)
		// Both modes' leftovers at once: weft's iptables chains made by hand.
		Exec(h1.Name, "iptables", "-t", "nat", "-N", "WEFT-POSTRTG")
		out, err := Exec(h1.Name, weftctlBin, "cleanup", "-subnet-file", h1.SubnetFile())
		if err != nil || !strings.Contains(out, "removed nftables table weft-ipv4") || !strings.Contains(out, "removed iptables chains WEFT-POSTRTG") {
			t.Errorf("cleanup said %q (%v)", out, err)
		}
		if table, _ := Exec(h1.Name, "nft", "list", "ruleset"); strings.Contains(table, "weft") {
			t.Errorf("nftables left:\n%s", table)
		}
		if save, _ := Exec(h1.Name, "iptables-save"); strings.Contains(save, "WEFT") {
			t.Errorf("iptables left:\n%s", save)
		}
	})
}

// TestDockerNFTables: on docker hosts (dockerd's FORWARD policy DROP, in
// iptables) an accept in weft's nftables table cannot let overlay traffic
// through, so weft keeps one rule in docker's DOCKER-USER chain, before
// docker's RETURN: containers on different hosts reach each other, an
// administrator's own DROP inserted there still wins, the rule comes back
// when deleted, and `weftctl cleanup` removes it.
func TestDockerNFTables(t *testing.T) {
	requireDocker(t)
	l := newLab(t, Options{Hosts: 2, Config: nftConfig(true), Docker: true, WeftdArgs: []string{"-ip-masq", "-iptables-resync", "1"}})
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	hosts := startDocker(t, l, l.Hosts)
	// host-gw: weft's devices and eth0, where its routes send the overlay.
	var weftRules []string
	for _, iface := range []string{"-i weft+", "-o weft+", "-i eth0", "-o eth0"} {
		weftRules = append(weftRules, `-A DOCKER-USER -s 10.5.0.0/16 -d 10.5.0.0/16 `+iface+` -m comment --comment "weft forward" -j ACCEPT`)
	}
	weftRule := strings.Join(weftRules, "\n")
	for _, h := range hosts {
		if _, err := Exec(h.Name, "iptables", "-P", "FORWARD", "DROP"); err != nil {
			t.Fatal(err)
		}
		checkNFTMode(t, h.Host, true)
		eventually(t, h.Name+": weft's rule in DOCKER-USER before docker's RETURN", 10*time.Second, func() error {
			out, _ := Exec(h.Name, "iptables", "-S", "DOCKER-USER")
			if !strings.HasSuffix(strings.TrimSpace(out), weftRule+"\n-A DOCKER-USER -j RETURN") {
				return fmt.Errorf("DOCKER-USER:\n%s", out)
			}
			return nil
		})
	}
	pairs := waitPingAcross(t, hosts, 20*time.Second)
	reliability(t, "docker (nftables mode): %d cross-host pairs reached each other through FORWARD DROP", pairs)

	t.Run("without weft's DOCKER-USER rule docker's DROP stops the overlay; the resync restores it", func(t *testing.T) {
		h, src := hosts[1], hosts[0]
		// Stop weftd so the rule stays away while we look.
		l.StopWeftd(h.Host, syscall.SIGTERM)
		for _, iface := range [][]string{{"-i", "weft+"}, {"-o", "weft+"}, {"-i", "eth0"}, {"-o", "eth0"}} {
			args := append(append([]string{"iptables", "-D", "DOCKER-USER", "-s", "10.5.0.0/16", "-d", "10.5.0.0/16"}, iface...),
				"-m", "comment", "--comment", "weft forward", "-j", "ACCEPT")
			if _, err := Exec(h.Name, args...); err != nil {
				t.Fatal(err)
			}
		}
		if err := src.Docker.Ping(src.Containers[0], h.Containers[0].IP); err == nil {
			t.Error("overlay traffic passed docker's FORWARD DROP without weft's rule: the test proves nothing")
		}
		if err := l.StartWeftd(h.Host); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(context.Background(), h.Host); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the overlay flows again", 15*time.Second, func() error { return src.Docker.Ping(src.Containers[0], h.Containers[0].IP) })
	})

	t.Run("an administrator's DOCKER-USER drop still wins", func(t *testing.T) {
		checkAdminDropWins(t, hosts[0], hosts[1], func() { time.Sleep(1500 * time.Millisecond) }) // a resync or more
	})

	t.Run("docker's icc=false still isolates containers of one host", func(t *testing.T) {
		checkICCStillApplies(t, hosts[0])
	})

	t.Run("weftctl cleanup removes the rule and the table", func(t *testing.T) {
		h := hosts[0]
		l.StopWeftd(h.Host, syscall.SIGTERM)
		out, err := Exec(h.Name, weftctlBin, "cleanup", "-subnet-file", h.SubnetFile())
		if err != nil || !strings.Contains(out, "removed 4 weft rule(s) in DOCKER-USER") {
			t.Errorf("cleanup said %q (%v)", out, err)
		}
		if rules, _ := Exec(h.Name, "iptables", "-S", "DOCKER-USER"); strings.Contains(rules, "weft") || !strings.Contains(rules, "-j RETURN") {
			t.Errorf("DOCKER-USER after cleanup:\n%s", rules)
		}
	})
}

// checkICCStillApplies: issue 30, item 6. Two containers on a docker
// network of h with inter-container traffic off (the network option behind
// dockerd's --icc=false), addressed inside the Network, do not reach each
// other, while both still reach the other hosts: weft's DOCKER-USER rules
// accept only traffic through the overlay. (A rule on the Network's
// addresses alone, the earlier form, let them through.)
func checkICCStillApplies(t *testing.T, h *DockerHost) {
	t.Helper()
	d := h.Docker
	// A /28 of the Network no host leases (the lab leases from 10.5.1.0).
	if _, err := d.Docker("network", "create", "-o", "com.docker.network.bridge.enable_icc=false", "--subnet", "10.5.254.0/28", "weft-noicc"); err != nil {
		t.Fatal(err)
	}
	var isolated []Container
	for _, name := range []string{"noicc-1", "noicc-2"} {
		if _, err := d.Docker("run", "-d", "--network", "weft-noicc", "--name", name, BusyboxImage, "sleep", "100000"); err != nil {
			t.Fatal(err)
		}
		out, err := d.Docker("inspect", "-f", `{{.State.Pid}} {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`, name)
		f := strings.Fields(out)
		if err != nil || len(f) != 2 {
			t.Fatalf("inspect %s: %q %v", name, out, err)
		}
		c := Container{Name: name}
		c.PID, _ = strconv.Atoi(f[0])
		if c.IP, err = netip.ParseAddr(f[1]); err != nil {
			t.Fatal(err)
		}
		isolated = append(isolated, c)
	}
	if err := isolated[0].PingFromNetns(isolated[1].IP); err == nil {
		t.Errorf("%s reached %s on a network with icc off: weft's DOCKER-USER rule bypassed docker's isolation", isolated[0].IP, isolated[1].IP)
	}
	// The check can fail: the same two containers reach each other once
	// docker's isolation is not in the way (icc on, a network of its own).
	if _, err := d.Docker("network", "create", "--subnet", "10.5.254.16/28", "weft-icc"); err != nil {
		t.Fatal(err)
	}
	for _, c := range isolated {
		if _, err := d.Docker("network", "connect", "weft-icc", c.Name); err != nil {
			t.Fatal(err)
		}
	}
	out, err := d.Docker("inspect", "-f", `{{(index .NetworkSettings.Networks "weft-icc").IPAddress}}`, isolated[1].Name)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "two containers on a network with icc on reach each other", 10*time.Second, func() error {
		return isolated[0].PingFromNetns(netip.MustParseAddr(strings.TrimSpace(out)))
	})
}
