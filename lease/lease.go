package lease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unique"

	"github.com/weftnet/weft/keys"
)

// ErrBadLease is wrapped by every error about a lease key or value that does
// not decode; such a lease is skipped, never fatal.
var ErrBadLease = errors.New("bad lease")

// maxLeaseValue bounds a lease value; a real one is about 150 bytes, so
// anything near this is hostile or broken.
const maxLeaseValue = 16 << 10

// Attrs is the JSON value stored at <prefix>/subnets/<key>, field for field
// as flannel writes it.
type Attrs struct {
	// PublicIP is the host's underlay address, where peers send its traffic.
	PublicIP netip.Addr
	// PublicIPv6 is the host's IPv6 underlay address on a dual-stack
	// network (where peers send its IPv6 traffic); nil encodes as JSON null.
	PublicIPv6 *netip.Addr
	// BackendType is the Backend.Type the host runs. Empty means udp: flannel's
	// udp backend writes none (see Backend and BackendConfig.LeaseType).
	BackendType string
	// BackendData is the backend's own data (VTEP MAC, WireGuard key); empty
	// for host-gw and udp.
	BackendData json.RawMessage
	// HostID is the host's stable identity (weft only, "WeftHostID":
	// flannel ignores the field); zero in a flannel host's lease. A host
	// recognises its own lease by it (SameHost), so an address change
	// keeps its subnet.
	HostID keys.HostID
	// Identity is the public key the host signs its lease with (weft
	// only, "WeftIdentity"; see Sign); zero in a flannel host's lease.
	Identity keys.IdentityKey
	// SignedAt is when the host signed the lease, in Unix seconds (weft
	// only, "WeftSigned"; see Sign): older values are replays.
	SignedAt int64
	// more holds the fields most leases leave empty (see attrsMore),
	// nil when all are; shared by copies of the Attrs, so never changed
	// in place: the With methods give Attrs with a new one.
	more *attrsMore
}

// attrsMore are the lease attributes most hosts do not publish: the
// IPv6 half's backend data (dual stack), and weft's WeftAlso, WeftSeen
// and WeftReach (a switch of Backend.Type, NAT). A host keeps a lease
// for every other host, and these were a third of its 296 bytes.
type attrsMore struct {
	backendV6Data json.RawMessage
	also          []PathAttrs
	seen          []Sighting
	reach         []string
	cert          *Certificate
}

func (m *attrsMore) empty() bool {
	return len(m.backendV6Data) == 0 && len(m.also) == 0 && len(m.seen) == 0 && len(m.reach) == 0 && m.cert == nil
}

// change sets a.more to a copy of it that set has changed, or nil when
// nothing is left in it.
func (a *Attrs) change(set func(*attrsMore)) {
	var m attrsMore
	if a.more != nil {
		m = *a.more
	}
	set(&m)
	if m.empty() {
		a.more = nil
		return
	}
	a.more = &m
}

// BackendV6Data is the backend's data for its IPv6 half (flannel's
// wireguard publishes the IPv6 device's port there); empty otherwise.
func (a Attrs) BackendV6Data() json.RawMessage {
	if a.more == nil {
		return nil
	}
	return a.more.backendV6Data
}

// WithBackendV6Data is a with BackendV6Data set to data.
func (a Attrs) WithBackendV6Data(data json.RawMessage) Attrs {
	a.change(func(m *attrsMore) { m.backendV6Data = data })
	return a
}

// Also are the other backends the host runs during a switch of
// Backend.Type, each with its data (weft only, "WeftAlso": flannel
// ignores the field, and reaches the host by BackendType as before);
// empty outside a switch, so the lease is byte for byte flannel's.
func (a Attrs) Also() []PathAttrs {
	if a.more == nil {
		return nil
	}
	return a.more.also
}

// WithAlso is a with Also set to paths.
func (a Attrs) WithAlso(paths []PathAttrs) Attrs {
	a.change(func(m *attrsMore) { m.also = paths })
	return a
}

// Seen are the peers this host's WireGuard device sees at another
// endpoint than their leases name (weft only, "WeftSeen"; see
// Sighting): empty but behind NAT.
func (a Attrs) Seen() []Sighting {
	if a.more == nil {
		return nil
	}
	return a.more.seen
}

// Reach are the peers (lease keys) this host behind NAT has a live
// direct WireGuard path to (weft only, "WeftReach"): a pair of hosts
// behind NAT goes direct when each names the other, else through a
// relay both name (see Sighting).
func (a Attrs) Reach() []string {
	if a.more == nil {
		return nil
	}
	return a.more.reach
}

// WithSightings is a with Seen and Reach set.
func (a Attrs) WithSightings(seen []Sighting, reach []string) Attrs {
	a.change(func(m *attrsMore) { m.seen, m.reach = seen, reach })
	return a
}

// PathAttrs is one more backend a host speaks: its type and the data
// its peers need to reach the host over it.
type PathAttrs struct {
	BackendType   string          `json:"BackendType"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
}

// maxAlso bounds the other backends a lease may name.
const maxAlso = 4

type attrsJSON struct {
	PublicIP      string          `json:"PublicIP"`
	PublicIPv6    *string         `json:"PublicIPv6"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
	Also          []PathAttrs     `json:"WeftAlso,omitempty"`
	HostID        string          `json:"WeftHostID,omitempty"`
	Seen          []Sighting      `json:"WeftSeen,omitempty"`
	Reach         []string        `json:"WeftReach,omitempty"`
	SignedAt      int64           `json:"WeftSigned,omitempty"`
	Identity      string          `json:"WeftIdentity,omitempty"`
	// Cert comes last but for the signature Sign appends.
	Cert string `json:"WeftCert,omitempty"`
}

// Cert is the membership certificate the host publishes (weft only,
// "WeftCert"; see Certificate), nil when it has none. It was parsed and
// its signature checked with the CA key it names; whether that CA is
// trusted is lease/membership's to decide.
func (a Attrs) Cert() *Certificate {
	if a.more == nil {
		return nil
	}
	return a.more.cert
}

// WithCert is a with Cert set to c.
func (a Attrs) WithCert(c *Certificate) Attrs {
	a.change(func(m *attrsMore) { m.cert = c })
	return a
}

// Paths are every backend the host speaks, BackendType's first (""
// being udp's, as Backend reads it).
func (a Attrs) Paths() []PathAttrs {
	out := make([]PathAttrs, 0, 1+len(a.Also()))
	out = append(out, PathAttrs{BackendType: a.Backend(), BackendData: a.BackendData, BackendV6Data: a.BackendV6Data()})
	return append(out, a.Also()...)
}

// SameHost reports whether a and b are the attributes of one host: the
// same HostID where both have one, else (a flannel host's lease) the same
// PublicIP, and on an IPv6-only network (where every host publishes
// PublicIP 0.0.0.0, as flannel does) the same PublicIPv6.
func (a Attrs) SameHost(b Attrs) bool {
	if !a.HostID.IsZero() && !b.HostID.IsZero() {
		return a.HostID == b.HostID
	}
	return a.SameAddress(b)
}

// SameAddress reports whether a and b publish one underlay address: the
// same PublicIP, and on an IPv6-only network the same PublicIPv6.
func (a Attrs) SameAddress(b Attrs) bool {
	ipA, ipB := a.publicIP(), b.publicIP()
	if ipA != ipB {
		return false
	}
	return !ipA.IsUnspecified() || (a.PublicIPv6 != nil && b.PublicIPv6 != nil && *a.PublicIPv6 == *b.PublicIPv6)
}

// publicIP is PublicIP as it is written: 0.0.0.0 when unset (an IPv6-only
// host's).
func (a Attrs) publicIP() netip.Addr {
	if !a.PublicIP.IsValid() {
		return netip.IPv4Unspecified()
	}
	return a.PublicIP
}

// PublicIPv6Addr is PublicIPv6, or the zero Addr when there is none.
func (a Attrs) PublicIPv6Addr() netip.Addr {
	if a.PublicIPv6 == nil {
		return netip.Addr{}
	}
	return *a.PublicIPv6
}

// MarshalJSON writes flannel's format: {"PublicIP":..,"PublicIPv6":null,
// "BackendType":..,"BackendData":..}.
func (a Attrs) MarshalJSON() ([]byte, error) {
	out := attrsJSON{PublicIP: a.publicIP().String(), BackendType: a.BackendType}
	if a.PublicIPv6 != nil {
		s := a.PublicIPv6.String()
		out.PublicIPv6 = &s
	}
	if len(a.BackendData) > 0 && string(a.BackendData) != "null" {
		out.BackendData = a.BackendData
	}
	if v6 := a.BackendV6Data(); len(v6) > 0 && string(v6) != "null" {
		out.BackendV6Data = v6
	}
	out.Also = a.Also()
	if !a.HostID.IsZero() {
		out.HostID = a.HostID.String()
	}
	out.Seen, out.Reach = a.Seen(), a.Reach()
	if !a.Identity.IsZero() {
		out.Identity = a.Identity.String()
	}
	out.SignedAt = a.SignedAt
	if c := a.Cert(); c != nil {
		out.Cert = encodeCert(c)
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads flannel's format and checks the addresses.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	var in attrsJSON
	if err := json.Unmarshal(data, &in); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(in.PublicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("PublicIP %q is not an IPv4 address", in.PublicIP)
	}
	*a = Attrs{PublicIP: ip, BackendType: knownType(in.BackendType), BackendData: in.BackendData}
	if len(in.Also) > maxAlso {
		return fmt.Errorf("WeftAlso names %d backends, more than the %d a switch uses", len(in.Also), maxAlso)
	}
	for _, p := range in.Also {
		if p.BackendType == "" || p.BackendType == a.Backend() || !validTypeName(p.BackendType) {
			return fmt.Errorf("WeftAlso: BackendType %q is empty, the lease's own, or not a backend name", p.BackendType)
		}
	}
	if err := checkSightings(in.Seen); err != nil {
		return err
	}
	if err := checkReach(in.Reach); err != nil {
		return err
	}
	more := attrsMore{backendV6Data: in.BackendV6Data, also: in.Also, seen: in.Seen, reach: in.Reach}
	if in.Cert != "" {
		if more.cert, err = decodeCert(in.Cert); err != nil {
			return err
		}
	}
	if !more.empty() {
		a.more = &more
	}
	if in.HostID != "" {
		if a.HostID, err = keys.ParseHostID(in.HostID); err != nil {
			return fmt.Errorf("WeftHostID: %w", err)
		}
	}
	if in.Identity != "" {
		if a.Identity, err = keys.ParseIdentityKey(in.Identity); err != nil {
			return fmt.Errorf("WeftIdentity: %w", err)
		}
	}
	if in.SignedAt < 0 {
		return fmt.Errorf("WeftSigned %d is before 1970", in.SignedAt)
	}
	a.SignedAt = in.SignedAt
	if in.PublicIPv6 != nil {
		ip6, err := ParseUnderlayIPv6(*in.PublicIPv6)
		if err != nil {
			return fmt.Errorf("PublicIPv6: %w", err)
		}
		a.PublicIPv6 = &ip6
	}
	return nil
}

// ParseUnderlayIPv6 reads an IPv6 address a host is reached at on the
// underlay. netip keeps whatever follows a '%' as the zone, and an
// IPv4-mapped address is an IPv4 host in disguise: neither names a host
// of another machine's network, and a zone would reach wireguard-go's
// text protocol as it is (a newline in it starts a new line of config),
// so both are refused here, where the value is decoded.
func ParseUnderlayIPv6(text string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(text)
	switch {
	case err != nil || !ip.Is6():
		return netip.Addr{}, fmt.Errorf("%q is not an IPv6 address", text)
	case ip.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%s carries a zone %q; an underlay address names no local interface", ip.WithZone(""), ip.Zone())
	case ip.Is4In6():
		return netip.Addr{}, fmt.Errorf("%s is an IPv4-mapped address; publish the IPv4 address as PublicIP", ip)
	}
	return ip, nil
}

// Backend is the Backend.Type of the host that wrote the lease, as flannel's
// own hosts read it: a lease with no BackendType is a udp host's, because
// flannel's udp backend publishes none (and its udp peers never look).
func (a Attrs) Backend() string {
	if a.BackendType == "" {
		return DefaultBackend
	}
	return a.BackendType
}

// LeaseType is the BackendType a host running this backend writes in its
// own lease: what flannel writes, so flannel hosts and weft hosts read each
// other's leases alike. That is none for the default (udp) and the other
// untyped backends (alloc), and the type otherwise.
func (b BackendConfig) LeaseType() string {
	if b.Untyped || b.Type == DefaultBackend {
		return ""
	}
	return b.Type
}

// Lease is one host's claim on a subnet, as read from the store.
type Lease struct {
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 half of a dual-stack lease (a flannel host's
	// on a dual-stack network); invalid when there is none.
	IPv6Subnet netip.Prefix
	Attrs      Attrs
	// Expiration is when the store drops the lease unless it is renewed; zero
	// when unknown.
	Expiration time.Time
	// Revision is the store revision that last wrote the lease; Replace uses
	// it to make sure nobody changed the lease in between.
	Revision int64
	// CreateRevision is the store revision that created the lease's key
	// (see Record.CreateRevision): the older of two leases has the lower.
	CreateRevision int64
	// StoreLeaseID is the store's handle for the lease's TTL (an etcd lease ID).
	StoreLeaseID int64
	// Signed says the value carried a signature that verifies with its
	// Attrs.Identity for this lease key (see Sign).
	Signed bool
}

// SignedBy reports whether the lease was signed by the identity key k.
func (l Lease) SignedBy(k keys.IdentityKey) bool {
	return l.Signed && !k.IsZero() && l.Attrs.Identity == k
}

// Key is the lease's key under <prefix>/subnets/: a dual-stack lease's
// names both subnets, as flannel's does.
func (l Lease) Key() string { return DualSubnetKey(l.Subnet, l.IPv6Subnet) }

// SubnetKey encodes a subnet as flannel names its key: 10.5.34.0/24 → "10.5.34.0-24".
func SubnetKey(subnet netip.Prefix) string {
	if !subnet.IsValid() {
		return noIPv4Key // flannel's empty subnet
	}
	return subnet.Addr().String() + "-" + strconv.Itoa(subnet.Bits())
}

// DualSubnetKey is flannel's key for a dual-stack lease, the two subnets
// joined by "&": "10.5.34.0-24&fc00:5:0:22::-64"; SubnetKey(v4) when v6 is
// not set. An IPv6-only lease (v4 not set) has flannel's empty IPv4 half:
// "0.0.0.0-0&fc00:5:0:22::-64".
func DualSubnetKey(v4, v6 netip.Prefix) string {
	if !v6.IsValid() {
		return SubnetKey(v4)
	}
	if !v4.IsValid() {
		return noIPv4Key + "&" + SubnetKey(v6)
	}
	return SubnetKey(v4) + "&" + SubnetKey(v6)
}

// noIPv4Key is the IPv4 half flannel writes in the key of an IPv6-only
// lease: its empty IPv4 subnet.
const noIPv4Key = "0.0.0.0-0"

// ParseSubnetKey decodes "10.5.34.0-24" into 10.5.34.0/24, and the IPv4
// half of a dual-stack key; the address must be the subnet's network
// address.
func ParseSubnetKey(key string) (netip.Prefix, error) {
	v4, _, err := ParseSubnetKeys(key)
	return v4, err
}

// ParseSubnetKeys decodes a key into its IPv4 subnet and, for a dual-stack
// key ("10.5.34.0-24&fc00:5:0:22::-64"), its IPv6 subnet (else the zero
// Prefix). Only the text flannel writes is accepted.
func ParseSubnetKeys(key string) (v4, v6 netip.Prefix, err error) {
	bad := func() (netip.Prefix, netip.Prefix, error) {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w: key %q is not of the form 10.5.34.0-24 or 10.5.34.0-24&fc00:5:0:22::-64", ErrBadLease, key)
	}
	text4, text6, dual := strings.Cut(key, "&")
	if dual && text4 == noIPv4Key {
		v4 = netip.Prefix{} // an IPv6-only lease
	} else if v4, err = parseSubnetText(text4, false); err != nil {
		return bad()
	}
	if dual {
		if v6, err = parseSubnetText(text6, true); err != nil {
			return bad()
		}
	}
	for _, subnet := range []netip.Prefix{v4, v6} {
		if subnet.IsValid() && subnet.Masked() != subnet {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("%w: key %q: %s is not a subnet's network address", ErrBadLease, key, subnet.Addr())
		}
	}
	return v4, v6, nil
}

// parseSubnetText reads "addr-bits" of one family, exactly as SubnetKey
// writes it.
func parseSubnetText(text string, ipv6 bool) (netip.Prefix, error) {
	addrText, bitsText, ok := strings.Cut(text, "-")
	if !ok {
		return netip.Prefix{}, ErrBadLease
	}
	addr, err := netip.ParseAddr(addrText)
	bits, err2 := strconv.Atoi(bitsText)
	if err != nil || err2 != nil || addr.Is4() == ipv6 || addr.Is4In6() || addr.Zone() != "" || bits < 1 || bits > addr.BitLen() {
		return netip.Prefix{}, ErrBadLease
	}
	subnet := netip.PrefixFrom(addr, bits)
	if SubnetKey(subnet) != text {
		return netip.Prefix{}, ErrBadLease
	}
	return subnet, nil
}

// Encode returns the lease value as flannel writes it.
func (a Attrs) Encode() []byte {
	data, err := json.Marshal(a)
	if err != nil {
		// Attrs holds only strings and already-valid raw JSON.
		panic(fmt.Sprintf("encoding lease attrs: %v", err))
	}
	return data
}

// DecodeLease turns a stored key and value into a Lease. Any error wraps
// ErrBadLease and names the key.
func DecodeLease(key string, value []byte) (Lease, error) { return decodeLease(key, value, true) }

// decodeLease is DecodeLease; without verify the signature is split off
// but not checked (Signed then says only that the value carries one):
// for leases whose attributes the caller does not act on.
func decodeLease(key string, value []byte, verify bool) (Lease, error) {
	subnet, subnet6, err := ParseSubnetKeys(key)
	if err != nil {
		return Lease{}, err
	}
	if len(value) > maxLeaseValue {
		return Lease{}, fmt.Errorf("%w: lease %s: value is %d bytes, more than %d", ErrBadLease, key, len(value), maxLeaseValue)
	}
	value = bytes.TrimSpace(value)
	unsigned, sig, signed, err := splitSigned(value)
	if err != nil {
		return Lease{}, fmt.Errorf("%w: lease %s: %v", ErrBadLease, key, err)
	}
	var attrs Attrs
	if err := json.Unmarshal(unsigned, &attrs); err != nil {
		return Lease{}, fmt.Errorf("%w: lease %s: %v", ErrBadLease, key, err)
	}
	if verify && signed && !attrs.Identity.Verify(signedMessage(key, unsigned), sig) {
		return Lease{}, fmt.Errorf("%w: lease %s: %v", ErrBadLease, key, errBadSignature)
	}
	return Lease{Subnet: subnet, IPv6Subnet: subnet6, Attrs: attrs, Signed: signed}, nil
}

// validTypeName reports whether s could name a backend: lower-case
// letters, digits and '-', as every Backend.Type is.
func validTypeName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// knownType is typ as one string shared by every lease that names it: a
// decoded string is an allocation of its own, and every lease carries
// one of a few backend names.
func knownType(typ string) string {
	if typ == "" {
		return ""
	}
	return unique.Make(typ).Value()
}
