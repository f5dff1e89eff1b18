package lease

import (
	"testing"
	"time"
)

func TestRenewAfter(t *testing.T) {
	for _, tt := range []struct{ ttl, margin, want time.Duration }{
		{24 * time.Hour, time.Hour, 23 * time.Hour},
		{6 * time.Second, time.Hour, 2 * time.Second}, // shorter than the margin: no hot loop
		{30 * time.Second, 5 * time.Second, 25 * time.Second},
		{30 * time.Second, 29 * time.Second, 10 * time.Second},
	} {
		h := &Holder{req: ClaimRequest{TTL: tt.ttl}, renewMargin: tt.margin}
		if got := h.renewAfter(); got != tt.want {
			t.Errorf("ttl %s margin %s: renew after %s, want %s", tt.ttl, tt.margin, got, tt.want)
		}
	}
}
