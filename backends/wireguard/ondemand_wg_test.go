package wireguard

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/weftnet/weft/keys"
)

// TestHeldPeerNeedsTraffic: issue 41, with real wireguard-go on both
// ends (in process, over a channel bind). A data message forged from
// live peer A's endpoint makes B configure A and start a handshake,
// which A completes: B still hands A back for removal when the hold
// ends, since no traffic of A's came out of the tunnel (before, the
// completed handshake kept A configured until idle, 190 s by default).
// Once A's traffic does come out, A stays.
func TestHeldPeerNeedsTraffic(t *testing.T) {
	aKey, bKey := privateKey(t), privateKey(t)
	binds := bindtest.NewChannelBinds()
	aTun, bTun := tuntest.NewChannelTUN(), tuntest.NewChannelTUN()
	quiet := device.NewLogger(device.LogLevelSilent, "")
	a := device.NewDevice(aTun.TUN(), binds[0], quiet)
	defer a.Close()
	o := newOnDemand()
	b := device.NewDevice(&tunWrapper{Device: bTun.TUN(), peers: o}, &bindWrapper{Bind: binds[1], peers: o}, quiet)
	defer b.Close()
	// B's bind reports A at 127.0.0.1:4; A reaches B at 127.0.0.1:1.
	aPublic := aKey.Public()
	ipcSet(t, a, "private_key=%s\npublic_key=%s\nendpoint=127.0.0.1:1\nallowed_ip=10.5.2.0/24\n", hexKey(aKey), hexKey(bKey.Public()))
	ipcSet(t, b, "private_key=%s\n", hexKey(bKey))
	o.setWanted([]PeerSpec{{Lease: "a", PublicKey: aPublic, Endpoint: netip.MustParseAddrPort("127.0.0.1:4"),
		AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.5.1.0/24")}}})
	o.setIdentity(bKey)
	o.setConfigure((&wgDevice{dev: b}).addPeer)
	o.enabled.Store(true)
	o.start()
	defer o.stop() // first: before the devices close
	if err := a.Up(); err != nil {
		t.Fatal(err)
	}
	if err := b.Up(); err != nil {
		t.Fatal(err)
	}
	go func() { // B's TUN hands what it decrypts here
		for range bTun.Inbound {
		}
	}()
	forgeAndHandshake := func() time.Time {
		t.Helper()
		since := time.Now()
		if err := binds[0].Send([][]byte{wgMessage(messageTransport, 32)}, bindtest.ChannelEndpoint(1)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for lastHandshake(t, b, aPublic).Before(since) {
			if time.Now().After(deadline) {
				t.Fatal("B started no handshake with A, or A did not complete it")
			}
			time.Sleep(10 * time.Millisecond)
		}
		return since
	}

	since := forgeAndHandshake()
	handshakes := map[keys.Key]time.Time{aPublic: lastHandshake(t, b, aPublic)}
	if early := o.expireProbation(since.Add(holdTimeout/2), handshakes); len(early) != 0 || !o.onProbation(aPublic) {
		t.Fatalf("before the hold ends: expired %v, held %v", early, o.onProbation(aPublic))
	}
	if expired := o.expireProbation(since.Add(holdTimeout+time.Second), handshakes); len(expired) != 1 || expired[0] != aPublic {
		t.Fatalf("A completed the handshake its forged data message started, no traffic came: expired %v, want A", expired)
	}
	o.markRemoved([]keys.Key{aPublic})
	ipcSet(t, b, "public_key=%s\nremove=true\n", hexKey(aPublic))

	// Again, past the kick interval (and wireguard-go's bound on
	// initiations, 50 a second), and A sends a packet this time.
	time.Sleep(50 * time.Millisecond)
	o.mu.Lock()
	clear(o.kicked)
	o.mu.Unlock()
	since = forgeAndHandshake()
	// A pings every 200 ms (one packet may meet a session still being
	// confirmed on a loaded machine) until B's tunnel let one out.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; o.onProbation(aPublic); i++ {
		if i%20 == 0 {
			select {
			case aTun.Outbound <- tuntest.Ping(netip.MustParseAddr("10.5.2.1"), netip.MustParseAddr("10.5.1.1")):
			case <-time.After(time.Second):
			}
		}
		o.expireProbation(since.Add(holdTimeout/2), nil)
		if time.Now().After(deadline) {
			t.Fatal("A pinged B through its session for 5 s, and A is still held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, configured := o.counts(); configured != 1 || o.holding.Load() != 0 {
		t.Errorf("after A's traffic: %d configured, %d held; want A configured, none held", configured, o.holding.Load())
	}
}

func hexKey(k keys.Key) string { return hex.EncodeToString(k[:]) }

func ipcSet(t *testing.T, d *device.Device, format string, args ...any) {
	t.Helper()
	if err := d.IpcSet(fmt.Sprintf(format, args...)); err != nil {
		t.Fatal(err)
	}
}

// lastHandshake is peer's last handshake on d (zero: none, or no peer).
func lastHandshake(t *testing.T, d *device.Device, peer keys.Key) time.Time {
	t.Helper()
	text, err := d.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	var current string
	var sec, nsec int64
	for line := range strings.Lines(text) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch {
		case k == "public_key":
			current = v
		case k == "last_handshake_time_sec" && current == hexKey(peer):
			fmt.Sscan(v, &sec)
		case k == "last_handshake_time_nsec" && current == hexKey(peer):
			fmt.Sscan(v, &nsec)
		}
	}
	if sec == 0 {
		return time.Time{}
	}
	return time.Unix(sec, nsec)
}
