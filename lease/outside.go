package lease

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
)

// OutsidePeer is a machine that is not a weft host (a laptop, a CI runner,
// a host in a site without etcd) joined to the overlay as a WireGuard
// peer: stored at <prefix>/peers/<Name> (flannel reads only subnets/),
// given an address of the config's PeersNetwork, configured on every weft
// host's WireGuard device.
type OutsidePeer struct {
	Name string `json:"-"`
	// PublicKey is the machine's WireGuard public key (base64).
	PublicKey string `json:"PublicKey"`
	// Address is the machine's overlay address, a /32 of PeersNetwork.
	Address netip.Prefix `json:"Address"`
	// Endpoint is where hosts reach it, when it has a fixed address;
	// without one, the machine reaches the hosts first and WireGuard
	// learns where it is.
	Endpoint netip.AddrPort `json:"Endpoint,omitzero"`
	// Keepalive is the keepalive interval hosts send it, in seconds (0:
	// none).
	Keepalive int `json:"Keepalive,omitempty"`
	// Seal is a membership CA's signature of the fields above (base64 of
	// a sealed record; lease/membership), which hosts in enforce mode
	// require. Empty: none.
	Seal string `json:"Seal,omitempty"`
	// Created is the store revision that created the record (0: not
	// read from a store): of two records that claim one address, the
	// older keeps it.
	Created int64 `json:"-"`
}

// PeerStore is where outside peers are kept (<prefix>/peers/ in etcd):
// weftd watches them, weftctl adds and removes them. A stored value that
// does not decode is named in bad, never fatal.
type PeerStore interface {
	Peers(ctx context.Context) (peers []OutsidePeer, bad []error, err error)
	// WatchPeers calls update with the peers now and after every change
	// until ctx ends; while the store is away the last set stands.
	WatchPeers(ctx context.Context, update func(peers []OutsidePeer, bad []error)) error
	// AddPeer stores a new peer; ErrExists when the name is taken.
	AddPeer(ctx context.Context, p OutsidePeer) error
	// RemovePeer deletes a peer and reports whether there was one.
	RemovePeer(ctx context.Context, name string) (bool, error)
}

// peerName is what a peer's name may be: it becomes an etcd key and a
// comment in wg-quick files.
var peerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidPeerName reports whether name can name an outside peer.
func ValidPeerName(name string) bool { return peerName.MatchString(name) }

// Check says what is wrong with an outside peer on the network cfg
// describes, or nil.
func (p OutsidePeer) Check(cfg *Config) error {
	key, err := base64.StdEncoding.DecodeString(p.PublicKey)
	switch {
	case !ValidPeerName(p.Name):
		return fmt.Errorf("peer name %q: use letters, digits, '.', '_' and '-' (at most 63)", p.Name)
	case err != nil || len(key) != 32:
		return fmt.Errorf("peer %s: PublicKey %q is not a WireGuard public key (44 characters of base64, from wg pubkey)", p.Name, p.PublicKey)
	case !cfg.PeersNetwork.IsValid():
		return fmt.Errorf(`peer %s: the network config has no "PeersNetwork" for outside peers`, p.Name)
	case !p.Address.IsValid() || p.Address.Bits() != 32 || !cfg.PeersNetwork.Contains(p.Address.Addr()):
		return fmt.Errorf("peer %s: Address %s is not a /32 of PeersNetwork %s", p.Name, p.Address, cfg.PeersNetwork)
	case p.Keepalive < 0 || p.Keepalive > 65535:
		return fmt.Errorf("peer %s: Keepalive %d is not between 0 and 65535 seconds", p.Name, p.Keepalive)
	}
	return p.CheckEndpoint()
}

// CheckEndpoint says what is wrong with the peer's Endpoint, or nil: no
// zone (netip keeps any bytes after '%', which would reach wireguard-go's
// text protocol), no IPv4-mapped form, and an address a machine can have.
func (p OutsidePeer) CheckEndpoint() error {
	if !p.Endpoint.IsValid() {
		return nil
	}
	ip := p.Endpoint.Addr()
	switch {
	case ip.Zone() != "":
		return fmt.Errorf("peer %s: Endpoint %s carries a zone %q; give the address alone", p.Name, netip.AddrPortFrom(ip.WithZone(""), p.Endpoint.Port()), ip.Zone())
	case ip.Is4In6():
		return fmt.Errorf("peer %s: Endpoint %s is IPv4-mapped; give the IPv4 address", p.Name, p.Endpoint)
	case ip.IsUnspecified() || ip.IsMulticast() || ip.IsLoopback() || p.Endpoint.Port() == 0:
		return fmt.Errorf("peer %s: Endpoint %s is not a machine's IP:PORT", p.Name, p.Endpoint)
	}
	return nil
}

// DecodeOutsidePeer reads a stored outside peer.
func DecodeOutsidePeer(name string, value []byte) (OutsidePeer, error) {
	var p OutsidePeer
	if len(value) > maxLeaseValue {
		return p, fmt.Errorf("%w: peer %s: value is %d bytes", ErrBadLease, name, len(value))
	}
	if err := json.Unmarshal(value, &p); err != nil {
		return p, fmt.Errorf("%w: peer %s: %v", ErrBadLease, name, err)
	}
	p.Name = name
	if !ValidPeerName(name) {
		return p, fmt.Errorf("%w: peer %q: the name is not letters, digits, '.', '_' and '-'", ErrBadLease, name)
	}
	if err := p.CheckEndpoint(); err != nil {
		return p, fmt.Errorf("%w: %v", ErrBadLease, err)
	}
	return p, nil
}

// Encode is the stored value.
func (p OutsidePeer) Encode() []byte {
	data, _ := json.Marshal(p)
	return data
}

// FreePeerAddress is the lowest address of PeersNetwork no peer has (the
// network's first address is left out, as for subnets).
func FreePeerAddress(cfg *Config, peers []OutsidePeer) (netip.Prefix, error) {
	used := map[netip.Addr]bool{}
	for _, p := range peers {
		used[p.Address.Addr()] = true
	}
	for a := cfg.PeersNetwork.Addr().Next(); cfg.PeersNetwork.Contains(a); a = a.Next() {
		if !used[a] && a.Next().IsValid() && cfg.PeersNetwork.Contains(a.Next()) { // not the last (broadcast) address
			return netip.PrefixFrom(a, 32), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w in PeersNetwork %s: every address is taken", ErrNoFreeSubnet, cfg.PeersNetwork)
}

// SortPeers orders outside peers by name.
func SortPeers(peers []OutsidePeer) {
	sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
}
