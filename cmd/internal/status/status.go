// Package status declares the document weftd serves at /status and
// `weftctl status` reads, once for both, so the two cannot disagree.
package status

import "github.com/weftnet/weft/mesh"

// Document is what /status serves.
type Document struct {
	Ready    bool   `json:"ready"`
	Backend  string `json:"backend"`
	Subnet   string `json:"subnet,omitempty"`
	PublicIP string `json:"public_ip,omitempty"`
	Network  string `json:"network,omitempty"`
	// IPv6Subnet, PublicIPv6 and IPv6Network are the IPv6 halves on a
	// dual-stack network.
	IPv6Subnet  string `json:"ipv6_subnet,omitempty"`
	PublicIPv6  string `json:"public_ipv6,omitempty"`
	IPv6Network string `json:"ipv6_network,omitempty"`
	Peers       []Peer `json:"peers"`
	// Skipped are the leases left out of the desired state, and why.
	Skipped    []mesh.Skipped `json:"skipped,omitempty"`
	Reconciles int            `json:"reconciles"`
	// WholeApplies are the reconciles that applied the whole state.
	WholeApplies int    `json:"whole_applies"`
	Errors       int    `json:"reconcile_errors"`
	LastError    string `json:"last_error,omitempty"`
	// Rules says which iptables chains weftd keeps ("masquerade", "forward").
	Rules map[string]bool `json:"iptables"`
	// Drops counts the datagrams the udp backend refused, by reason.
	Drops map[string]uint64 `json:"udp_dropped,omitempty"`
	// TunnelDrops counts the VXLAN and IP-in-IP packets dropped because
	// their source holds no lease, by source (those of the last ten
	// minutes).
	TunnelDrops map[string]uint64 `json:"tunnel_dropped_by_source,omitempty"`
	// Strict is strict encryption, when the config asks for it.
	Strict *Strict `json:"strict_encryption,omitempty"`
	// OnDemand is the wireguard-go device's on-demand mode, when on.
	OnDemand *OnDemand `json:"on_demand,omitempty"`
	// Relay is what this host forwards as a relay, when it has.
	Relay *Relay `json:"relay,omitempty"`
	// LeaseConflicts counts the times another writer overwrote this
	// host's lease (taken back each time).
	LeaseConflicts uint64 `json:"lease_conflicts,omitempty"`
	// LeaseContested says the last overwrites came so often that the
	// next take-back waits (they recur: someone keeps writing).
	LeaseContested bool `json:"lease_contested,omitempty"`
	// ConfigNotFollowed says what of the network config in etcd this
	// host does not follow, and why (-require-encryption, or a switch
	// into the extension backend that waits for a restart).
	ConfigNotFollowed string `json:"config_not_followed,omitempty"`
	// Membership is signed membership, when on (-membership-ca).
	Membership *Membership `json:"membership,omitempty"`
}

// Membership is this host's signed membership: its mode, its own
// certificate (or why it has none in force), and how many leases, peers
// and configs were refused (enforce) or warned about (warn).
type Membership struct {
	Mode        string `json:"mode"`
	Certificate string `json:"certificate,omitempty"`
	NotAfter    string `json:"not_after,omitempty"`
	Note        string `json:"note,omitempty"`
	Refused     uint64 `json:"refused"`
}

// Relay is this host's forwarder for pairs of hosts behind NAT: the
// pairs and their ports, and the datagrams it forwarded and dropped. It
// forwards ciphertext: it sees who talks to whom, when and how much.
type Relay struct {
	Pairs          []RelayPair `json:"pairs"`
	Forwarded      uint64      `json:"forwarded"`
	ForwardedBytes uint64      `json:"forwarded_bytes"`
	NotWireGuard   uint64      `json:"dropped_not_wireguard"`
	UnknownEnd     uint64      `json:"dropped_unknown_end"`
	OverRate       uint64      `json:"dropped_over_rate"`
}

// RelayPair is one pair a relay forwards for.
type RelayPair struct {
	Ends      [2]string `json:"ends"`
	Port      int       `json:"port"`
	TryDirect bool      `json:"try_direct,omitempty"`
}

// Strict is strict encryption's state: the packets its rule dropped,
// which would have left for another host's subnet unencrypted.
type Strict struct {
	Dropped uint64 `json:"dropped"`
}

// OnDemand is the on-demand mode of a wireguard-go device: the peers the
// leases name, those configured on the device (the rest are idle), and
// how many were added for traffic, refused by the rate bound, removed for
// idleness.
type OnDemand struct {
	Known      int    `json:"known"`
	Configured int    `json:"configured"`
	Added      uint64 `json:"added"`
	Capped     uint64 `json:"capped"`
	Idled      uint64 `json:"idled"`
	// Refused and Expired are the activations by data packets refused
	// (too many peers held, or the peer kicked lately), and the peers
	// removed because they did not show they were the peer in time
	// (forged sources, replays, or peers gone).
	Refused uint64 `json:"refused_unverified"`
	Expired uint64 `json:"expired_unverified"`
	// Forged and Replayed are the handshake initiations that failed
	// their proof, and those older than the latest from their key.
	Forged   uint64 `json:"forged_initiations,omitempty"`
	Replayed uint64 `json:"replayed_initiations,omitempty"`
	// NATNotEager are the peers behind NAT (their leases say so) beyond
	// the bound on those configured eagerly: configured only for traffic.
	NATNotEager int `json:"nat_not_eager,omitempty"`
}

// Peer is one peer of this host.
type Peer struct {
	Lease    string `json:"lease"`
	Subnet   string `json:"subnet"`
	PublicIP string `json:"public_ip"`
	// IPv6Subnet and PublicIPv6 are the peer's IPv6 half on a dual-stack
	// network.
	IPv6Subnet string `json:"ipv6_subnet,omitempty"`
	PublicIPv6 string `json:"public_ipv6,omitempty"`
	// State is "programmed" for kernel backends; for wireguard the time
	// since the last handshake, "no handshake" or "not on the device".
	State string `json:"state"`
	// Path is the data path that carries the peer's traffic (the backend,
	// or "direct" for a wireguard peer DirectRouting reaches by a plain
	// route); Encrypted says whether it encrypts; InClear, when it does
	// not, says why.
	Path      string `json:"path"`
	Encrypted bool   `json:"encrypted"`
	InClear   string `json:"in_clear,omitempty"`
	// Via is how a WireGuard peer is reached: "direct" at Endpoint (the
	// address its lease names, or where the hosts see it behind NAT),
	// "relay <lease key>" through that host's forwarder at Endpoint (its
	// port for the pair), or "trying direct (asked by relay <lease key>)"
	// while the relay asks the pair to try its direct path.
	Via           string `json:"via,omitempty"`
	Endpoint      string `json:"endpoint,omitempty"`
	LastHandshake string `json:"last_handshake,omitempty"`
	RxBytes       int64  `json:"rx_bytes,omitempty"`
	TxBytes       int64  `json:"tx_bytes,omitempty"`
}
