package lab

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/keys"
)

// TestOutsidePeer: a machine that is not a weft host joins the overlay as
// a WireGuard peer: `weftctl peer add` gives it an address of the config's
// PeersNetwork, `weftctl showconf` prints its wg-quick file (every host a
// peer), and wireguard-go in a namespace configured from that file reaches
// the containers on every host and they reach it, unmasqueraded although
// weftd runs with -ip-masq (the peer sees each container's own address);
// `weftctl peer rm` cuts it off.
func TestOutsidePeer(t *testing.T) {
	config := `{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.0/24","Backend":{"Type":"wireguard"}}`
	l := startCluster(t, Options{Hosts: 3, Backend: backends.WireGuard, Config: config, WeftdArgs: []string{"-ip-masq"}})
	ns, _, err := l.AddUnderlayNetns("out", 203)
	if err != nil {
		t.Fatal(err)
	}
	weftctl := func(args ...string) (string, error) {
		return Exec(l.Hosts[0].Name, append([]string{weftctlBin, "-etcd-endpoints", l.EtcdEndpoint()}, args...)...)
	}
	key, err := keys.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := weftctl("peer", "add", "laptop", "-public-key", key.Public().String()); err != nil || !strings.Contains(out, "at 10.6.0.1/32") {
		t.Fatalf("peer add: %v\n%s", err, out)
	}
	if _, err := weftctl("peer", "add", "laptop", "-public-key", key.Public().String()); err == nil {
		t.Error("a second peer of the same name was accepted")
	}
	conf, err := weftctl("showconf", "laptop")
	if err != nil {
		t.Fatalf("showconf: %v\n%s", err, conf)
	}
	for _, h := range l.Hosts {
		if !strings.Contains(conf, "PublicKey = "+publicKeyOf(t, h)) || !strings.Contains(conf, "AllowedIPs = "+h.Subnet.String()) {
			t.Errorf("showconf lacks host %s:\n%s", h.Name, conf)
		}
	}
	// The machine's side, from the file as a user would: wg-quick's
	// Address line is ours to apply; the private key is the machine's.
	var setconf []string
	address := ""
	for _, line := range strings.Split(conf, "\n") {
		switch {
		case strings.HasPrefix(line, "Address = "):
			address = strings.TrimPrefix(line, "Address = ")
		case strings.HasPrefix(line, "PrivateKey = "):
			setconf = append(setconf, "PrivateKey = "+key.String())
		default:
			setconf = append(setconf, line)
		}
	}
	file := filepath.Join(l.Dir, "laptop.conf")
	if err := os.WriteFile(file, []byte(strings.Join(setconf, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	dev := "wo" + l.ID
	startWireGuardGo(t, ns, dev)
	if err := RunAll(
		[]string{"ip", "netns", "exec", ns, "wg", "setconf", dev, file},
		[]string{"ip", "-n", ns, "addr", "add", address, "dev", dev},
		[]string{"ip", "-n", ns, "link", "set", dev, "up"},
		[]string{"ip", "-n", ns, "route", "add", DefaultNetwork, "dev", dev},
	); err != nil {
		t.Fatal(err)
	}
	laptop := netip.MustParsePrefix(address).Addr()
	for _, h := range l.Hosts {
		eventually(t, "the outside peer pings "+h.Name+"'s container", 20*time.Second, func() error {
			_, err := Exec(ns, "ping", "-c", "1", "-W", "1", "-q", h.ContainerIP().String())
			return err
		})
		var perr error
		seen, err := PingSources(InNetns(ns), time.Second, func() {
			_, perr = Exec(h.Container, "ping", "-c", "1", "-W", "2", "-q", laptop.String())
		})
		if perr != nil || err != nil {
			t.Errorf("%s's container does not reach the outside peer: %v %v", h.Name, perr, err)
		} else if len(seen) == 0 || seen[0] != h.ContainerIP() {
			t.Errorf("the outside peer saw %s's ping from %v, want the container's own %s (-ip-masq must leave PeersNetwork alone)", h.Name, seen, h.ContainerIP())
		}
	}
	if out, err := weftctl("peer", "rm", "laptop"); err != nil {
		t.Fatalf("peer rm: %v\n%s", err, out)
	}
	eventually(t, "the outside peer is cut off", 20*time.Second, func() error {
		for _, h := range l.Hosts {
			if _, err := Exec(ns, "ping", "-c", "1", "-W", "1", "-q", h.ContainerIP().String()); err == nil {
				return fmt.Errorf("%s still answers", h.Name)
			}
		}
		return nil
	})
}
