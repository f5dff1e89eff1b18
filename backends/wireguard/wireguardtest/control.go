// Package wireguardtest is an in-memory WireGuard control (the part of
// wgctrl weft uses) for the pure tier: it keeps devices as wgctrl would
// report them, applies wgtypes.Config with wgctrl's rules, counts and can
// fail each operation, and prints a device as `wg show` does, so tests of
// the wireguard backend compare text an operator would read.
package wireguardtest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Operations a test can count or fail.
const (
	OpDevice    = "device"
	OpConfigure = "configure"
)

// Control is the fake. Its zero value is not usable; use New.
type Control struct {
	mu      sync.Mutex
	devices map[string]*wgtypes.Device
	fail    map[string]error
	calls   map[string]int
	closed  bool
	// exists says whether the device's link is there (the fake kernel's).
	exists func(name string) bool
}

// New makes a control whose devices are the links exists reports (a
// test's fake kernel holds them): a device is empty when its link appears
// and forgotten when its link goes, as wgctrl sees a kernel device.
func New(exists func(name string) bool) *Control {
	return &Control{devices: map[string]*wgtypes.Device{}, fail: map[string]error{}, calls: map[string]int{}, exists: exists}
}

// device is the state of a device whose link exists (c.mu held).
func (c *Control) device(name string) *wgtypes.Device {
	if !c.exists(name) {
		delete(c.devices, name)
		return nil
	}
	d := c.devices[name]
	if d == nil {
		d = &wgtypes.Device{Name: name, Type: wgtypes.Unknown}
		c.devices[name] = d
	}
	return d
}

// Fail makes every later call of op fail with err, until Fail(op, nil).
func (c *Control) Fail(op string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		delete(c.fail, op)
		return
	}
	c.fail[op] = err
}

// Calls says how many calls of op were made (failed ones included).
func (c *Control) Calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[op]
}

// Closed reports whether Close was called.
func (c *Control) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// SetHandshake records a completed handshake of peer on a device at t (as
// if its packets came), for the on-demand sweeps; false when it is not
// there.
func (c *Control) SetHandshake(name string, peer wgtypes.Key, t time.Time, rx, tx int64) bool {
	return c.changePeer(name, peer, func(p *wgtypes.Peer) {
		p.LastHandshakeTime, p.ReceiveBytes, p.TransmitBytes = t, rx, tx
	})
}

// SetEndpoint moves peer's endpoint on a device to ep, as WireGuard does
// when the peer's packets come from there (roaming, a NAT's mapping);
// false when it is not there.
func (c *Control) SetEndpoint(name string, peer wgtypes.Key, ep netip.AddrPort) bool {
	return c.changePeer(name, peer, func(p *wgtypes.Peer) { p.Endpoint = net.UDPAddrFromAddrPort(ep) })
}

// changePeer changes peer on a device with f; false when it is not there.
func (c *Control) changePeer(name string, peer wgtypes.Key, f func(*wgtypes.Peer)) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.device(name)
	if d == nil {
		return false
	}
	for i := range d.Peers {
		if d.Peers[i].PublicKey == peer {
			f(&d.Peers[i])
			return true
		}
	}
	return false
}

func (c *Control) begin(op string) error {
	c.calls[op]++
	return c.fail[op]
}

// Device returns a copy of the device, or an error wrapping os.ErrNotExist
// as wgctrl does for a device that is not there.
func (c *Control) Device(name string) (*wgtypes.Device, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.begin(OpDevice); err != nil {
		return nil, err
	}
	return c.copyOf(name)
}

// copyOf is a copy of the device as Device returns it (c.mu held).
func (c *Control) copyOf(name string) (*wgtypes.Device, error) {
	d := c.device(name)
	if d == nil {
		return nil, fmt.Errorf("wireguardtest: device %s: %w", name, os.ErrNotExist)
	}
	out := *d
	out.Peers = make([]wgtypes.Peer, len(d.Peers))
	for i, p := range d.Peers {
		p.AllowedIPs = slices.Clone(p.AllowedIPs)
		out.Peers[i] = p
	}
	return &out, nil
}

// ConfigureDevice applies cfg as wgctrl documents it: the private key and
// port when set, ReplacePeers, then each peer (Remove, UpdateOnly, the
// endpoint, keepalive and PSK when set, ReplaceAllowedIPs or added IPs).
func (c *Control) ConfigureDevice(name string, cfg wgtypes.Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.begin(OpConfigure); err != nil {
		return err
	}
	d := c.device(name)
	if d == nil {
		return fmt.Errorf("wireguardtest: configuring %s: %w", name, os.ErrNotExist)
	}
	if cfg.PrivateKey != nil {
		d.PrivateKey, d.PublicKey = *cfg.PrivateKey, cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		d.ListenPort = *cfg.ListenPort
	}
	if cfg.ReplacePeers {
		d.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(d.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		switch {
		case pc.Remove:
			if i >= 0 {
				d.Peers = slices.Delete(d.Peers, i, i+1)
			}
			continue
		case i < 0 && pc.UpdateOnly:
			continue
		case i < 0:
			d.Peers = append(d.Peers, wgtypes.Peer{PublicKey: pc.PublicKey, ProtocolVersion: 1})
			i = len(d.Peers) - 1
		}
		p := &d.Peers[i]
		if pc.PresharedKey != nil {
			p.PresharedKey = *pc.PresharedKey
		}
		if pc.Endpoint != nil {
			ep := *pc.Endpoint
			p.Endpoint = &ep
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
	}
	return nil
}

// Close lets go of the control.
func (c *Control) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

// Show prints the device as `wg show NAME` does (keys in base64, the
// private and pre-shared keys hidden), with the peers in the order of
// their public keys rather than of their latest handshakes, so a test's
// expected text does not depend on timing. A missing device prints as wg
// says it. It is not counted as a call and does not fail.
func (c *Control) Show(name string) string {
	c.mu.Lock()
	d, err := c.copyOf(name)
	c.mu.Unlock()
	if errors.Is(err, os.ErrNotExist) {
		return "Unable to access interface: No such device\n"
	} else if err != nil {
		return err.Error() + "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "interface: %s\n", d.Name)
	if d.PrivateKey != (wgtypes.Key{}) {
		fmt.Fprintf(&b, "  public key: %s\n  private key: (hidden)\n", d.PublicKey)
	}
	if d.ListenPort != 0 {
		fmt.Fprintf(&b, "  listening port: %d\n", d.ListenPort)
	}
	peers := slices.Clone(d.Peers)
	slices.SortFunc(peers, func(a, b wgtypes.Peer) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	for _, p := range peers {
		fmt.Fprintf(&b, "\npeer: %s\n", p.PublicKey)
		if p.PresharedKey != (wgtypes.Key{}) {
			b.WriteString("  preshared key: (hidden)\n")
		}
		if p.Endpoint != nil {
			fmt.Fprintf(&b, "  endpoint: %s\n", p.Endpoint)
		}
		b.WriteString("  allowed ips: " + allowedIPs(p.AllowedIPs) + "\n")
		if !p.LastHandshakeTime.IsZero() {
			b.WriteString("  latest handshake: (set)\n")
		}
		if p.PersistentKeepaliveInterval > 0 {
			fmt.Fprintf(&b, "  persistent keepalive: every %d seconds\n", int(p.PersistentKeepaliveInterval/time.Second))
		}
	}
	return b.String()
}

// allowedIPs prints a peer's allowed IPs as wg does: comma-separated in
// the order set, "(none)" when empty.
func allowedIPs(ips []net.IPNet) string {
	if len(ips) == 0 {
		return "(none)"
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return strings.Join(out, ", ")
}
