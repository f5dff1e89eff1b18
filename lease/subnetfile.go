package lease

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultSubnetFile is where flannel (and so docker's guides) expect it.
const DefaultSubnetFile = "/run/flannel/subnet.env"

// SubnetEnv is the content of the subnet file docker reads.
type SubnetEnv struct {
	Network netip.Prefix
	// Subnet is this host's subnet; the file carries its first address
	// (10.5.34.1/24), the bridge's.
	Subnet netip.Prefix
	MTU    int
	IPMasq bool
	// IPv6Network and IPv6Subnet are the IPv6 halves on a dual-stack
	// network (FLANNEL_IPV6_NETWORK, FLANNEL_IPV6_SUBNET); invalid otherwise.
	IPv6Network, IPv6Subnet netip.Prefix
}

// Encode renders the file exactly as flanneld writes it.
func (e SubnetEnv) Encode() []byte {
	var b bytes.Buffer
	if e.Subnet.IsValid() { // none on an IPv6-only network, as flannel writes it
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", netip.PrefixFrom(e.Subnet.Addr().Next(), e.Subnet.Bits()))
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", netip.PrefixFrom(e.IPv6Subnet.Addr().Next(), e.IPv6Subnet.Bits()))
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%v\n", e.IPMasq)
	return b.Bytes()
}

// WriteSubnetFile writes the file atomically (temp file, fsync, rename), so
// docker never reads half of it.
func WriteSubnetFile(path string, e SubnetEnv) error {
	return WriteFileAtomic(path, e.Encode(), 0o644)
}

// WriteFileAtomic replaces path with data: readers see the old or the new
// content, never a mix, and the file has perm from its first byte.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// ParseSubnetEnv reads a subnet file. Errors name the line at fault.
func ParseSubnetEnv(data []byte) (SubnetEnv, error) {
	var e SubnetEnv
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			return e, fmt.Errorf("line %d: %q is not KEY=value", n, line)
		}
		var err error
		switch key {
		case "FLANNEL_NETWORK":
			e.Network, err = netip.ParsePrefix(val)
		case "FLANNEL_SUBNET":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(val); err == nil {
				e.Subnet = p.Masked()
			}
		case "FLANNEL_IPV6_NETWORK":
			e.IPv6Network, err = netip.ParsePrefix(val)
		case "FLANNEL_IPV6_SUBNET":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(val); err == nil {
				e.IPv6Subnet = p.Masked()
			}
		case "FLANNEL_MTU":
			e.MTU, err = strconv.Atoi(val)
		case "FLANNEL_IPMASQ":
			e.IPMasq, err = strconv.ParseBool(val)
		default:
			continue
		}
		if err != nil {
			return e, fmt.Errorf("line %d: %s: %v", n, key, err)
		}
		seen[key] = true
	}
	for key, p := range map[string]netip.Prefix{"FLANNEL_IPV6_NETWORK": e.IPv6Network, "FLANNEL_IPV6_SUBNET": e.IPv6Subnet} {
		if p.IsValid() && !p.Addr().Is6() {
			return e, fmt.Errorf("%s: %s is not an IPv6 prefix", key, p)
		}
	}
	required := []string{"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU"}
	if !seen["FLANNEL_SUBNET"] && seen["FLANNEL_IPV6_SUBNET"] {
		required = []string{"FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU"} // IPv6-only
	}
	for _, k := range required {
		if !seen[k] {
			return e, fmt.Errorf("%s is missing", k)
		}
	}
	return e, nil
}

// ReadSubnetFile reads and parses path.
func ReadSubnetFile(path string) (SubnetEnv, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SubnetEnv{}, err
	}
	e, err := ParseSubnetEnv(data)
	if err != nil {
		return e, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// PreviousSubnets is what an earlier run's subnet file says of this
// host's subnets, read tolerantly (ReadPreviousSubnets).
type PreviousSubnets struct {
	// Subnet and IPv6Subnet are FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET,
	// masked; invalid when the file has no single usable value.
	Subnet, IPv6Subnet netip.Prefix
	// Problems are what was skipped, one text each.
	Problems []string
}

// ReadPreviousSubnets reads the subnets in path as flannel v0.28 reads its
// previous subnet (godotenv, then each comma-separated CIDR): a line that
// is not KEY=value is skipped, a value may be quoted or follow "export",
// a CIDR that does not parse (or is of the other family) is skipped, and
// a key left with more than one CIDR gives none. Only an unreadable file
// is an error. (ReadSubnetFile, for the whole file, stays strict.)
func ReadPreviousSubnets(path string) (PreviousSubnets, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PreviousSubnets{}, err
	}
	var out PreviousSubnets
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, val, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			out.Problems = append(out.Problems, fmt.Sprintf("line %d is not KEY=value", n))
			continue
		}
		key, val = strings.TrimSpace(key), unquote(strings.TrimSpace(val))
		var want6 bool
		var into *netip.Prefix
		switch key {
		case "FLANNEL_SUBNET":
			into = &out.Subnet
		case "FLANNEL_IPV6_SUBNET":
			into, want6 = &out.IPv6Subnet, true
		default:
			continue
		}
		var found []netip.Prefix
		for _, part := range strings.Split(val, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(part))
			if err != nil || p.Addr().Is6() != want6 || p.Addr().Zone() != "" {
				out.Problems = append(out.Problems, fmt.Sprintf("line %d: %s: %.60q is not a CIDR of its family", n, key, part))
				continue
			}
			found = append(found, p.Masked())
		}
		*into = netip.Prefix{}
		switch {
		case len(found) == 1:
			*into = found[0]
		case len(found) > 1:
			out.Problems = append(out.Problems, fmt.Sprintf("line %d: %s holds %d subnets; a host has one", n, key, len(found)))
		}
	}
	return out, sc.Err()
}

// unquote strips one pair of matching quotes around a value, as a shell
// (and godotenv) would.
func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		return v[1 : len(v)-1]
	}
	return v
}
