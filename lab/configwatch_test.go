package lab

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/weftnet/weft/backends"
)

// TestConfigWatchTakesUpASwitch: with weftd's default resync interval
// (30 s), a vxlan cluster switched to wireguard by one etcd write takes
// the change up within 2 s on every host (the store watches the config
// key; the resync is only the safety net), and the first WireGuard
// datagram crosses the underlay within 10 s of the write.
func TestConfigWatchTakesUpASwitch(t *testing.T) {
	l := startCluster(t, Options{Hosts: 2, Backend: backends.VXLAN, WeftdArgs: []string{"-resync-interval", "30s"}})
	h1, h2 := l.Hosts[0], l.Hosts[1]
	pingers := startPingers(t, l)
	defer stopPingers(t, pingers, "switch to wireguard with the config watched")
	capture, err := l.CaptureOn(l.Underlay, "br0", "udp port 51820", "wg-first")
	if err != nil {
		t.Fatal(err)
	}
	offsets := map[*Host]int64{h1: h1.LogOffset(), h2: h2.LogOffset()}
	written := time.Now()
	if err := l.PutConfig(context.Background(), fmt.Sprintf(`{"Network":%q,"Backend":{"Type":"wireguard"}}`, DefaultNetwork)); err != nil {
		t.Fatal(err)
	}
	for _, h := range l.Hosts {
		at, _, err := h.WaitLogLine(offsets[h], 5*time.Second, "the network config changed: taking it up live", "config=wireguard")
		if err != nil {
			t.Fatalf("%v\n%s", err, h.LogTail(10))
		}
		took := at.Sub(written)
		reliability(t, "%s took the config change up %s after the etcd write (resync interval 30s)", h.Name, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("%s took the config change up %s after the write, want within 2s", h.Name, took.Round(time.Millisecond))
		}
	}
	waitSwitched(t, l, backends.WireGuard)
	first, ok, err := capture.FirstPacketAt()
	if err != nil || !ok {
		t.Fatalf("no WireGuard datagram on the underlay after the switch: %v", err)
	}
	took := first.Sub(written)
	reliability(t, "first WireGuard datagram on the underlay %s after the etcd write", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("the first WireGuard datagram crossed %s after the write, want within 10s", took.Round(time.Millisecond))
	}
}
