package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/etcdtest"
)

// wgQuickParser runs wg-quick's own parse_options (from wireguard-tools'
// /usr/bin/wg-quick, parse only: nothing is brought up) on a file and
// prints what wg-quick would act on: the [Interface] keys it runs or sets
// itself, then the text it hands to `wg setconf`.
const wgQuickParser = `
set -e
shopt -s extglob
die() { echo "wg-quick: $*" >&2; exit 1; }
eval "$(sed -n '/^parse_options() {/,/^}/p' /usr/bin/wg-quick)"
parse_options "$1"
echo "ADDRESSES=${ADDRESSES[*]}"
echo "RUNS=${#PRE_UP[@]} ${#POST_UP[@]} ${#PRE_DOWN[@]} ${#POST_DOWN[@]}"
echo "DNS=${DNS[*]} ${DNS_SEARCH[*]}"
echo "TABLE=$TABLE SAVE_CONFIG=$SAVE_CONFIG MTU=$MTU"
echo "--- wg setconf"
printf '%s' "$WG_CONFIG"
`

// TestShowconfPrintsParsedValuesOnly: issue 30, item 1. A cluster holds
// two real wireguard hosts and leases an etcd writer crafted: a PublicKey
// carrying wg-quick lines (PreUp, DNS and a peer taking 0.0.0.0/0), a Port
// of -1, a PublicIPv6 with a zone, a PublicIP inside the Network.
// wg-quick's own parser, run on showconf's output, finds one [Interface]
// with nothing to run and one [Peer] per real host holding its subnet, and
// the file says it carries the pre-shared key.
func TestShowconfPrintsParsedValuesOnly(t *testing.T) {
	if _, err := os.Stat("/usr/bin/wg-quick"); err != nil {
		t.Fatalf("wg-quick's parser is needed (make deps installs wireguard-tools): %v", err)
	}
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	prefix := fmt.Sprintf("/weft-showconf-%d", time.Now().UnixNano())
	store, err := etcdstore.New(etcdstore.Options{Endpoints: []string{srv.Endpoint}, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ctx := context.Background()
	psk := keys.Key{0: 42}
	if err := store.PutConfig(ctx, fmt.Appendf(nil, `{"Network":"10.5.0.0/16","PeersNetwork":"10.6.0.0/24","Backend":{"Type":"wireguard","PSK":%q}}`, psk)); err != nil {
		t.Fatal(err)
	}
	mkKey := func() keys.Key {
		k, err := keys.Generate()
		if err != nil {
			t.Fatal(err)
		}
		return k.Public()
	}
	hostA, hostB, attacker, stolen, laptop := mkKey(), mkKey(), mkKey(), mkKey(), mkKey()
	put := func(subnetKey, publicIP, publicIPv6 string, publicKey string, port int) {
		t.Helper()
		data, _ := json.Marshal(map[string]any{"PublicKey": publicKey, "Port": port})
		attrs := map[string]any{"PublicIP": publicIP, "PublicIPv6": nil, "BackendType": "wireguard", "BackendData": json.RawMessage(data)}
		if publicIPv6 != "" {
			attrs["PublicIPv6"] = publicIPv6
		}
		value, _ := json.Marshal(attrs)
		if _, err := store.Create(ctx, subnetKey, value, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	put("10.5.1.0-24", "192.168.50.1", "", hostA.String(), 51820)
	put("10.5.2.0-24", "192.168.50.2", "", hostB.String(), 51821)
	// The attack as the issue gives it: wg-quick runs PreUp as root.
	put("10.5.3.0-24", "192.168.50.3", "", attacker.String()+"\n[Interface]\nPreUp = touch /tmp/weft-pwned\nDNS = 192.0.2.53\n[Peer]\nPublicKey = "+
		stolen.String()+"\nAllowedIPs = 0.0.0.0/0", 51820)
	put("10.5.4.0-24", "192.168.50.4", "", mkKey().String(), -1)
	put("10.5.5.0-24", "192.168.50.5", "2001:db8::5%eth0\nPostUp = id", mkKey().String(), 51820)
	put("10.5.6.0-24", "10.5.9.9", "", mkKey().String(), 51820)
	if err := store.AddPeer(ctx, lease.OutsidePeer{Name: "laptop", PublicKey: laptop.String(), Address: netip.MustParsePrefix("10.6.0.1/32"), Keepalive: 25}); err != nil {
		t.Fatal(err)
	}
	// Issue 30, item 10: a zone carrying a terminal escape never reaches
	// the terminal of `weftctl peer list`.
	hostile := lease.OutsidePeer{Name: "phone", PublicKey: mkKey().String(), Address: netip.MustParsePrefix("10.6.0.2/32"),
		Endpoint: netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1").WithZone("\x1b]0;pwned\x07"), 51820)}
	if err := store.AddPeer(ctx, hostile); err != nil {
		t.Fatal(err)
	}
	var list, listErr bytes.Buffer
	if code := run([]string{"-etcd-endpoints", srv.Endpoint, "-etcd-prefix", prefix, "peer", "list"}, &list, &listErr); code != 0 ||
		strings.ContainsAny(list.String(), "\x1b\x07") || !strings.Contains(list.String(), "INVALID: bad lease: peer phone: Endpoint [2001:db8::1]:51820 carries a zone \"\\x1b]0;pwned\\a\"") {
		t.Errorf("peer list = %d %q %s", code, list.String(), listErr.String())
	}

	var out, errOut bytes.Buffer
	if code := run([]string{"-etcd-endpoints", srv.Endpoint, "-etcd-prefix", prefix, "showconf", "laptop"}, &out, &errOut); code != 0 {
		t.Fatalf("showconf: %d %s", code, errOut.String())
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "weftpeer.conf")
	if err := os.WriteFile(conf, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	parsed, err := exec.Command("bash", "-c", wgQuickParser, "wgquick", conf).CombinedOutput()
	if err != nil {
		t.Fatalf("wg-quick's parser: %v\n%s\nfile:\n%s", err, parsed, out.String())
	}
	head, wgConfig, _ := strings.Cut(string(parsed), "--- wg setconf\n")
	if want := "ADDRESSES=10.6.0.1/32\nRUNS=0 0 0 0\nDNS= \nTABLE= SAVE_CONFIG= MTU=\n"; head != want {
		t.Errorf("wg-quick acts on\n%s\nwant\n%s\nfile:\n%s", head, want, out.String())
	}
	var sections, peerKeys, allowed []string
	for _, line := range strings.Split(wgConfig, "\n") {
		key, value, _ := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		switch {
		case strings.HasPrefix(key, "["):
			sections = append(sections, key)
		case key == "PublicKey":
			peerKeys = append(peerKeys, value)
		case key == "AllowedIPs":
			allowed = append(allowed, value)
		}
	}
	if got := strings.Join(sections, " "); got != "[Interface] [Peer] [Peer]" {
		t.Errorf("sections %q, want one [Interface] and a [Peer] per real host\n%s", got, out.String())
	}
	if want := []string{hostA.String(), hostB.String()}; !slices.Equal(peerKeys, want) {
		t.Errorf("peer keys %q, want %q", peerKeys, want)
	}
	if got := strings.Join(allowed, " "); got != "10.5.1.0/24 10.5.2.0/24" {
		t.Errorf("AllowedIPs %q", got)
	}
	text := out.String()
	if !strings.Contains(text, "holds the cluster's pre-shared key") || strings.Count(text, "PresharedKey = "+psk.String()) != 2 ||
		!strings.Contains(text, "Endpoint = 192.168.50.2:51821") {
		t.Errorf("file:\n%s", text)
	}
	for _, skipped := range []string{"10.5.3.0-24", "10.5.4.0-24: Port -1", "10.5.5.0-24", "10.5.6.0-24"} {
		if !strings.Contains(errOut.String(), skipped) {
			t.Errorf("stderr does not name the skipped lease %s:\n%s", skipped, errOut.String())
		}
	}
}
