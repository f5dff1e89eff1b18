package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/backends/underlay"
)

// errUnderlayChanged ends a run whose external interface or address
// changed while it ran (DHCP gave another address, an elastic IP moved,
// the interface was deleted and added again). main runs again at once
// with the data path left in place; the new run chooses the interface
// anew, finds this host's lease by its host ID and rewrites it in place
// with the new address (the subnet stays), and the peers follow the
// lease.
var errUnderlayChanged = errors.New("the external interface or its address changed")

// underlaySettle is how long followUnderlay lets a burst of kernel events
// end before it looks: an address replaced is a delete and an add.
const underlaySettle = 200 * time.Millisecond

// followUnderlay watches the kernel's address and link events and ends
// the run with errUnderlayChanged once the interface and address weftd
// would choose now (chooseExternal, by the same flags) differ from the
// run's, and there is one to choose: while the old address is gone and no
// new one has come, the run goes on as it is. An IPv6 address counts only
// on a network that carries IPv6. It returns nil, following nothing, when
// the kernel refuses the subscription.
func followUnderlay(ctx context.Context, o *options, ext underlay.ExternalInterface, ipv6 bool,
	log *slog.Logger) error {
	done := make(chan struct{})
	defer close(done)
	addrs, links := make(chan netlink.AddrUpdate, 64), make(chan netlink.LinkUpdate, 64)
	warn := func(err error) { log.Warn("following the external interface's address", "err", err) }
	if err := netlink.AddrSubscribeWithOptions(addrs, done,
		netlink.AddrSubscribeOptions{ErrorCallback: warn}); err != nil {
		warn(err)
		return nil
	}
	if err := netlink.LinkSubscribeWithOptions(links, done,
		netlink.LinkSubscribeOptions{ErrorCallback: warn}); err != nil {
		warn(err)
		return nil
	}
	quiet := slog.New(slog.DiscardHandler)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-addrs:
		case <-links:
		}
		if !settle(ctx, addrs, links) {
			return ctx.Err()
		}
		now, _, err := chooseExternal(o, quiet)
		if err != nil {
			continue // nothing to choose yet
		}
		if now.Name != ext.Name || now.Index != ext.Index || now.MTU != ext.MTU || now.Addr != ext.Addr || ipv6 &&
			now.AddrIPv6 != ext.AddrIPv6 {
			log.Info("the external interface or its address changed: taking it up", "iface", now.Name, "addr", now.Addr,
				"was_iface", ext.Name, "was_addr", ext.Addr, "mtu", now.MTU)
			return errUnderlayChanged
		}
	}
}

// settle drains events until none has come for underlaySettle; false when
// ctx ends first.
func settle(ctx context.Context, addrs <-chan netlink.AddrUpdate, links <-chan netlink.LinkUpdate) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-addrs:
		case <-links:
		case <-time.After(underlaySettle):
			return true
		}
	}
}
