package main

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testInterfaces is a host with a loopback, two NICs and a bridge.
var testInterfaces = []hostInterface{
	{Name: "lo", Index: 1, MTU: 65536},
	{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("192.168.1.11/24")}},
	{Name: "enp3s0", Index: 3, MTU: 9000, Addrs: []netip.Prefix{netip.MustParsePrefix("10.20.0.5/16")}},
	{Name: "docker0", Index: 4, MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("172.17.0.1/16")}},
}

// toEnp3s0 is `ip route get`: everything leaves by enp3s0 from 10.20.0.5.
func toEnp3s0(netip.Addr) (int, netip.Addr, error) { return 3, netip.MustParseAddr("10.20.0.5"), nil }

// TestPickExternalAsFlannel walks flannel's rules for the external
// interface (main.go, pkg/ipmatch).
func TestPickExternalAsFlannel(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantName string
		wantAddr string
	}{
		{"default route", nil, "eth0", "192.168.1.10"},
		{"-public-ip alone picks the interface holding it", []string{"-public-ip", "10.20.0.5"}, "enp3s0", "10.20.0.5"},
		{"-public-ip nowhere on the host: default route", []string{"-public-ip", "203.0.113.9"}, "eth0", "192.168.1.10"},
		{"-iface by name, its first address", []string{"-iface", "enp3s0"}, "enp3s0", "10.20.0.5"},
		{"-iface by IP uses that address", []string{"-iface", "192.168.1.11"}, "eth0", "192.168.1.11"},
		{"-iface falls through to the next -iface", []string{"-iface", "wlan0", "-iface", "enp3s0"}, "enp3s0", "10.20.0.5"},
		{"-iface falls through to -iface-regex", []string{"-iface", "wlan0", "-iface-regex", "^en[a-z0-9]{1,4}$"}, "enp3s0", "10.20.0.5"},
		{"-iface-regex on addresses first, the matched one used", []string{"-iface-regex", `192\.168\.1\.11`}, "eth0", "192.168.1.11"},
		{"-iface-regex matching an address wins over a name", []string{"-iface-regex", "^(eth0|10\\..*)$"}, "enp3s0", "10.20.0.5"},
		{"-iface-regex falls through to -iface-can-reach", []string{"-iface-regex", "^wl", "-iface-can-reach", "10.20.9.9"}, "enp3s0", "10.20.0.5"},
		{"-iface-can-reach uses the route's source", []string{"-iface-can-reach", "10.20.9.9"}, "enp3s0", "10.20.0.5"},
	}
	for _, tt := range tests {
		o, err := parseFlags(tt.args, env(nil), nil)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		c, err := pickExternal(o, testInterfaces, 2, toEnp3s0)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if c.iface.Name != tt.wantName || c.addr.String() != tt.wantAddr {
			t.Errorf("%s: %s %s (%s), want %s %s", tt.name, c.iface.Name, c.addr, c.why, tt.wantName, tt.wantAddr)
		}
	}
}

// TestPickExternalFailures: given options that match nothing, the error
// names what was tried and what the host has.
func TestPickExternalFailures(t *testing.T) {
	noRoute := func(netip.Addr) (int, netip.Addr, error) { return 0, netip.Addr{}, errors.New("unreachable") }
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-iface", "wlan0", "-iface-regex", "^wl"}, "no interface matches -iface wlan0, -iface-regex ^wl (interfaces: lo:[] eth0:"},
		{[]string{"-iface-can-reach", "10.99.0.1"}, "no interface matches -iface-can-reach 10.99.0.1"},
		{[]string{"-iface-regex", "("}, `-iface-regex "("`},
	} {
		o, err := parseFlags(tt.args, env(nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pickExternal(o, testInterfaces, 2, noRoute); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want %q", tt.args, err, tt.want)
		}
	}
	o, _ := parseFlags(nil, env(nil), nil)
	if _, err := pickExternal(o, testInterfaces, 0, noRoute); err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Errorf("no default route: %v", err)
	}
}

// TestPickExternalRegexIPv6: -iface-regex also matches IPv6 addresses
// (after IPv4 ones), and the matched one is the PublicIPv6; the IPv4
// address is the interface's first.
func TestPickExternalRegexIPv6(t *testing.T) {
	ifaces := append(testInterfaces[:0:0], testInterfaces...)
	ifaces[2].Addrs6 = []netip.Prefix{netip.MustParsePrefix("fd50::5/64"), netip.MustParsePrefix("fd50::6/64")}
	ifaces = append(ifaces, hostInterface{Name: "v6only", Index: 9, MTU: 1500, Addrs6: []netip.Prefix{netip.MustParsePrefix("fd60::9/64")}})
	for _, tt := range []struct{ regex, name, addr, addr6 string }{
		{`^fd50::6$`, "enp3s0", "10.20.0.5", "fd50::6"},
		{`^fd60:`, "v6only", "invalid IP", "fd60::9"},
		{`^(10\.20\..*|fd50::6)$`, "enp3s0", "10.20.0.5", "invalid IP"}, // IPv4 first
	} {
		o, err := parseFlags([]string{"-iface-regex", tt.regex}, env(nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pickExternal(o, ifaces, 2, toEnp3s0)
		if err != nil || c.iface.Name != tt.name || c.addr.String() != tt.addr || c.addr6.String() != tt.addr6 {
			t.Errorf("%s: %s %s %s (%s) %v, want %s %s %s", tt.regex, c.iface.Name, c.addr, c.addr6, c.why, err, tt.name, tt.addr, tt.addr6)
		}
	}
}

// TestUsableAddrsByFlags: an interface's addresses are taken by their
// kernel flags as flannel v0.28 takes them: deprecated ones left out, set
// by hand before DHCP/SLAAC, non-temporary before temporary (IPv6 privacy
// addresses; IPv4 secondaries share the flag), link-local and host-scope
// ones never; otherwise the kernel's order.
func TestUsableAddrsByFlags(t *testing.T) {
	addr := func(cidr string, scope, flags int) netlink.Addr {
		p := netip.MustParsePrefix(cidr)
		return netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Scope: scope, Flags: flags}
	}
	global := unix.RT_SCOPE_UNIVERSE
	got := usableAddrs([]netlink.Addr{
		addr("2001:db8::aaaa/64", global, unix.IFA_F_TEMPORARY),                       // privacy address, rotates
		addr("2001:db8::1111/64", global, 0),                                          // SLAAC
		addr("2001:db8::dead/64", global, unix.IFA_F_PERMANENT|unix.IFA_F_DEPRECATED), // being renumbered away
		addr("fe80::1/64", unix.RT_SCOPE_LINK, unix.IFA_F_PERMANENT),
		addr("2001:db8::2222/64", global, unix.IFA_F_PERMANENT), // set by hand
		addr("2001:db8::3333/64", global, 0),
	})
	want := []netip.Prefix{netip.MustParsePrefix("2001:db8::2222/64"), netip.MustParsePrefix("2001:db8::1111/64"),
		netip.MustParsePrefix("2001:db8::3333/64"), netip.MustParsePrefix("2001:db8::aaaa/64")}
	if !slices.Equal(got, want) {
		t.Errorf("IPv6 order %v, want %v", got, want)
	}
	got = usableAddrs([]netlink.Addr{
		addr("192.168.1.11/24", global, unix.IFA_F_PERMANENT|unix.IFA_F_SECONDARY),
		addr("127.0.0.1/8", unix.RT_SCOPE_HOST, unix.IFA_F_PERMANENT),
		addr("192.168.1.10/24", global, unix.IFA_F_PERMANENT),
	})
	if want := []netip.Prefix{netip.MustParsePrefix("192.168.1.10/24"), netip.MustParsePrefix("192.168.1.11/24")}; !slices.Equal(got, want) {
		t.Errorf("IPv4 order %v, want the primary first: %v", got, want)
	}
}
