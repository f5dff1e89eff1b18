package mesh

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/weftnet/weft/lease"
)

// TestPeerWithLeavesCopiesAlone checks that the rarely set fields behave
// as plain fields would: a copy changed with a With method leaves the
// original as it was, and a peer whose rare fields are all empty again
// equals one that never had them.
func TestPeerWithLeavesCopiesAlone(t *testing.T) {
	base := Peer{Key: "10.5.2.0-24", Subnet: netip.MustParsePrefix("10.5.2.0/24")}
	six := netip.MustParsePrefix("fc00:5:0:2::/64")
	dual := base.WithIPv6(six, netip.MustParseAddr("fd00::2"), []byte(`{"v6":1}`))
	seen := dual.WithSightings([]lease.Sighting{{Lease: "10.5.3.0-24"}}, []string{"10.5.3.0-24"})
	if base.IPv6Subnet().IsValid() || base.Seen() != nil || base.more != nil {
		t.Errorf("base changed: %+v", base)
	}
	if dual.IPv6Subnet() != six || len(dual.Seen()) != 0 {
		t.Errorf("dual: %v %v", dual.IPv6Subnet(), dual.Seen())
	}
	if seen.IPv6Subnet() != six || len(seen.Seen()) != 1 || len(seen.Reach()) != 1 || string(seen.BackendV6Data()) != `{"v6":1}` {
		t.Errorf("seen: %v %v %v", seen.IPv6Subnet(), seen.Seen(), seen.Reach())
	}
	cleared := seen.WithSightings(nil, nil).WithIPv6(netip.Prefix{}, netip.Addr{}, nil)
	if !reflect.DeepEqual(cleared, base) || cleared.more != nil {
		t.Errorf("cleared = %+v, want %+v", cleared, base)
	}
	if !samePeer(cleared, base) || samePeer(seen, dual) {
		t.Error("samePeer does not compare the rare fields")
	}
}
