package liveswitch

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/backends"
)

// TestChangedOptions: the options of two Backend objects that differ,
// keys matched as encoding/json matches them (any case), Type left out;
// only the ones that cut pairs are warned about.
func TestChangedOptions(t *testing.T) {
	got := ChangedOptions(json.RawMessage(`{"Type":"wireguard","PSK":"a","MTU":1400,"ListenPort":51820}`),
		json.RawMessage(`{"type":"wireguard", "psk":"b","MTU": 1400,"PersistentKeepaliveInterval":25}`))
	if want := []string{"listenport", "persistentkeepaliveinterval", "psk"}; !slices.Equal(got, want) {
		t.Errorf("changed options = %v, want %v", got, want)
	}
	var buf bytes.Buffer
	LogOptionGaps(backends.WireGuard, got, slog.New(slog.NewTextHandler(&buf, nil)))
	if out := buf.String(); strings.Count(out, "not gapless") != 2 || !strings.Contains(out, "option=psk") || strings.Contains(out, "persistentkeepalive") {
		t.Errorf("warnings:\n%s\nwant one for psk and one for listenport", out)
	}
}
