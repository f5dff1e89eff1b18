package lease

import (
	"net/netip"
	"reflect"
	"testing"
	"unsafe"
)

// TestAttrsWithLeavesCopiesAlone checks that the rarely set attributes
// behave as plain fields would: a copy changed with a With method leaves
// the original as it was, and attributes whose rare fields are empty again
// equal ones that never had them. A flannel lease decodes with none, and
// its BackendType shares one string with every other lease's.
func TestAttrsWithLeavesCopiesAlone(t *testing.T) {
	var a, b Attrs
	if err := a.UnmarshalJSON([]byte(`{"PublicIP":"192.168.50.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}}`)); err != nil {
		t.Fatal(err)
	}
	if err := b.UnmarshalJSON([]byte(`{"PublicIP":"192.168.50.3","PublicIPv6":null,"BackendType":"vxlan"}`)); err != nil {
		t.Fatal(err)
	}
	if a.more != nil {
		t.Errorf("a flannel lease keeps rare fields: %+v", *a.more)
	}
	if unsafe.StringData(a.BackendType) != unsafe.StringData(b.BackendType) {
		t.Error("two leases' BackendType are two strings")
	}
	switched := a.WithAlso([]PathAttrs{{BackendType: "wireguard"}})
	seen := switched.WithSightings([]Sighting{{Lease: "10.5.3.0-24", Endpoint: netip.MustParseAddrPort("198.51.100.3:51820")}}, []string{"10.5.3.0-24"}).WithBackendV6Data([]byte(`{"v6":1}`))
	if a.Also() != nil || a.Seen() != nil || a.BackendV6Data() != nil {
		t.Errorf("a changed: %+v", a)
	}
	if len(switched.Also()) != 1 || switched.Seen() != nil {
		t.Errorf("switched: %+v %+v", switched.Also(), switched.Seen())
	}
	if len(seen.Also()) != 1 || len(seen.Seen()) != 1 || len(seen.Reach()) != 1 || string(seen.BackendV6Data()) != `{"v6":1}` {
		t.Errorf("seen: %+v", *seen.more)
	}
	var back Attrs
	if err := back.UnmarshalJSON(seen.Encode()); err != nil || !reflect.DeepEqual(back, seen) {
		t.Errorf("round trip: %+v, %v; want %+v", back, err, seen)
	}
	cleared := seen.WithAlso(nil).WithSightings(nil, nil).WithBackendV6Data(nil)
	if !reflect.DeepEqual(cleared, a) || cleared.more != nil {
		t.Errorf("cleared = %+v, want %+v", cleared, a)
	}
}
