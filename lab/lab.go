// Package lab builds a weft cluster on one machine: an underlay network
// namespace with a bridge and an etcd, N host namespaces each running weftd,
// and behind each host a "container" namespace on a docker0-like bridge
// addressed from the host's FLANNEL_SUBNET. `make lab` and the cluster-tier
// tests both use it. Every name carries a run-unique id, and Close removes
// everything the lab made, stopping only the processes it started.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weftnet/weft/backends"
	"github.com/weftnet/weft/lease/etcdstore"
)

// Underlay addressing. Everything lives inside the lab's own namespaces, so
// these never meet the machine's real networks.
const (
	underlayPrefix = "192.168.50.0/24"
	// underlayPrefix6 is the underlay's IPv6 network in a dual-stack lab.
	underlayPrefix6 = "fd50::/64"
	// DefaultIPv6Network is the overlay's IPv6 pool in a dual-stack lab.
	DefaultIPv6Network = "fc00:5::/48"
	etcdPort           = 2379
	// DefaultNetwork is the overlay pool the lab configures.
	DefaultNetwork = "10.5.0.0/16"
)

// Options describe a lab.
type Options struct {
	Hosts int
	// Backend is the Backend.Type to configure (host-gw, ...).
	Backend string
	// Config, when set, is the whole network config (overrides Backend).
	Config string
	// Weftd is the path of the weftd binary.
	Weftd string
	// Self is the binary that runs etcd when started with RoleEnv=etcd
	// (the lab command or a test binary); os.Args[0] when empty.
	Self string
	// WeftdArgs are extra flags for every weftd.
	WeftdArgs []string
	// Docker leaves the hand-made container namespaces out: the tests put
	// docker containers on the hosts instead (StartDockerd).
	Docker bool
	// WeftdHosts is how many hosts (the first ones) run weftd directly
	// from the lab; 0 means all. The others run it some other way (the
	// compose service).
	WeftdHosts int
	// EtcdMembers is the size of the etcd cluster: 0 or 1 runs one
	// member in the underlay namespace; more run each member in a
	// namespace of its own on the underlay, and weftd gets every
	// member's endpoint.
	EtcdMembers int
	// IPv6 makes the lab dual stack: the underlay gets IPv6 addresses
	// beside its IPv4 ones, the config "EnableIPv6" with
	// DefaultIPv6Network, and every container an address of each family.
	IPv6 bool
	// IPv6Only makes the overlay IPv6-only ("EnableIPv4": false): as IPv6,
	// but hosts lease only IPv6 subnets and containers have only IPv6
	// addresses (the underlay keeps IPv4 for etcd).
	IPv6Only bool
	// NATHosts puts the last NATHosts hosts each behind a NAT router of
	// their own (a namespace on the underlay that masquerades with
	// --random, so the source port changes, and drops unsolicited
	// packets from outside): such a host has a private address
	// (172.31.<index>.2) that the others cannot reach, as a home or office
	// machine behind its router.
	NATHosts int
	// NATKeepsPorts makes the NAT routers keep a source port where they
	// can (masquerade without --random): one mapping per source port
	// whatever the destination, as most home and office routers do, so
	// two hosts behind such NATs can reach each other directly.
	NATKeepsPorts bool
	// NATSameAddress gives every host behind NAT the same private address,
	// 172.31.0.2 behind its router's 172.31.0.1, as machines at two sites
	// often have: their leases name one PublicIP.
	NATSameAddress bool
	// Dir keeps logs and state; a temporary directory when empty.
	Dir string
	// Log receives progress lines; nil for none.
	Log func(format string, args ...any)
}

// Host is one lab host.
type Host struct {
	Index     int
	Name      string // namespace of the host
	Container string // namespace of its container
	PublicIP  netip.Addr
	Dir       string
	Subnet    netip.Prefix
	// NAT is the namespace of the host's NAT router (Options.NATHosts),
	// empty for a host on the underlay.
	NAT string
	// PublicIPv6 and IPv6Subnet are the host's IPv6 underlay address and
	// leased IPv6 subnet in a dual-stack lab; invalid otherwise.
	PublicIPv6 netip.Addr
	IPv6Subnet netip.Prefix

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	notify *net.UnixConn
	ready  chan struct{}
}

// Lab is a running cluster.
type Lab struct {
	opts     Options
	ID       string
	Underlay string // namespace holding the bridge and etcd
	Hosts    []*Host
	Dir      string
	ownsDir  bool
	// Members are the etcd servers: one in the underlay namespace, or
	// each in a namespace of its own (Options.EtcdMembers > 1).
	Members  []*Member
	store    *etcdstore.Store
	nsMade   []string
	dockerds []*Dockerd
	podmans  []*Podman
}

// New builds the namespaces and starts etcd; Start then starts weftd.
func New(opts Options) (l *Lab, err error) {
	if opts.Hosts < 2 {
		opts.Hosts = 3
	}
	if opts.Backend == "" {
		opts.Backend = backends.HostGW
	}
	if opts.Self == "" {
		opts.Self = os.Args[0]
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	if opts.IPv6Only {
		opts.IPv6 = true
	}
	l = &Lab{opts: opts, ID: runID(), Dir: opts.Dir}
	if l.Dir == "" {
		if l.Dir, err = os.MkdirTemp("", "weftlab-"+l.ID+"-"); err != nil {
			return nil, err
		}
		l.ownsDir = true
	}
	defer func() {
		if err != nil {
			l.Close()
		}
	}()
	l.Underlay = "wl" + l.ID + "-ul"
	if err := l.addNetns(l.Underlay); err != nil {
		return l, err
	}
	ul := l.Underlay
	gw := l.underlayAddr(1)
	if err := RunAll(
		[]string{"ip", "-n", ul, "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "-n", ul, "addr", "add", gw.String() + "/24", "dev", "br0"},
		[]string{"ip", "-n", ul, "link", "set", "br0", "up"},
	); err != nil {
		return l, err
	}
	if opts.IPv6 {
		if err := run("ip", "-n", ul, "addr", "add", l.underlayAddr6(1).String()+"/64", "dev", "br0", "nodad"); err != nil {
			return l, err
		}
	}
	for i := 1; i <= opts.Hosts; i++ {
		h := &Host{Index: i, Name: fmt.Sprintf("wl%s-h%d", l.ID, i), Container: fmt.Sprintf("wl%s-c%d", l.ID, i),
			PublicIP: l.underlayAddr(10 + i), Dir: filepath.Join(l.Dir, fmt.Sprintf("h%d", i))}
		if opts.IPv6 {
			h.PublicIPv6 = l.underlayAddr6(10 + i)
		}
		if err := os.MkdirAll(h.Dir, 0o755); err != nil {
			return l, err
		}
		if i > opts.Hosts-opts.NATHosts {
			err = l.addNATHost(h, gw)
		} else {
			err = l.addHost(h, gw)
		}
		if err != nil {
			return l, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	if err := l.addMembers(gw); err != nil {
		return l, err
	}
	if err := l.StartEtcd(); err != nil {
		return l, err
	}
	return l, nil
}

func (l *Lab) underlayAddr(n int) netip.Addr {
	b := netip.MustParsePrefix(underlayPrefix).Addr().As4()
	b[3] = byte(n)
	return netip.AddrFrom4(b)
}

// underlayAddr6 is the IPv6 twin of underlayAddr(n), for a dual-stack lab.
func (l *Lab) underlayAddr6(n int) netip.Addr {
	b := netip.MustParsePrefix(underlayPrefix6).Addr().As16()
	b[15] = byte(n)
	return netip.AddrFrom16(b)
}

// EtcdEndpoint is the value of weftd's -etcd-endpoints: every member's
// client URL on the underlay, comma-separated.
func (l *Lab) EtcdEndpoint() string { return strings.Join(l.EtcdEndpoints(), ",") }

// EtcdEndpoints are the members' client URLs.
func (l *Lab) EtcdEndpoints() []string {
	var eps []string
	for _, m := range l.Members {
		eps = append(eps, m.Endpoint())
	}
	return eps
}

func (l *Lab) addNetns(name string) error {
	if err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	l.nsMade = append(l.nsMade, name)
	return run("ip", "-n", name, "link", "set", "lo", "up")
}

func (l *Lab) addHost(h *Host, gw netip.Addr) error {
	return l.plugIn(h.Name, fmt.Sprintf("h%d", h.Index), h.PublicIP, gw)
}

// addNATHost puts h behind a NAT router of its own: the router takes h's
// underlay address and masquerades everything h sends out with --random
// (a new source port per mapping, as home routers do when the port is
// taken, so WireGuard's port is not kept); h gets 172.31.<index>.2 behind
// it (172.31.0.2 with NATSameAddress), an address no other host can reach.
func (l *Lab) addNATHost(h *Host, gw netip.Addr) error {
	h.NAT = fmt.Sprintf("wl%s-n%d", l.ID, h.Index)
	if err := l.plugIn(h.NAT, fmt.Sprintf("n%d", h.Index), h.PublicIP, gw); err != nil {
		return err
	}
	site := byte(h.Index)
	if l.opts.NATSameAddress {
		site = 0
	}
	inside := netip.AddrFrom4([4]byte{172, 31, site, 1})
	h.PublicIP = inside.Next()
	masquerade := []string{"ip", "netns", "exec", h.NAT, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "eth0", "-j", "MASQUERADE", "--random"}
	if l.opts.NATKeepsPorts {
		masquerade = masquerade[:len(masquerade)-1]
	}
	if err := l.addNetns(h.Name); err != nil {
		return err
	}
	return RunAll(
		[]string{"ip", "-n", h.NAT, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", h.Name},
		[]string{"ip", "-n", h.NAT, "addr", "add", inside.String() + "/24", "dev", "lan0"},
		[]string{"ip", "-n", h.NAT, "link", "set", "lan0", "up"},
		[]string{"ip", "netns", "exec", h.NAT, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		masquerade,
		// Unsolicited packets from outside are dropped, as a router's
		// firewall drops them: before their conntrack entry is confirmed,
		// so they leave none behind that would take a mapping's port.
		[]string{"ip", "netns", "exec", h.NAT, "iptables", "-A", "INPUT", "-i", "eth0", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"},
		[]string{"ip", "-n", h.Name, "addr", "add", h.PublicIP.String() + "/24", "dev", "eth0"},
		[]string{"ip", "-n", h.Name, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", h.Name, "route", "add", "default", "via", inside.String()},
	)
}

// plugIn makes namespace ns and wires it to the underlay bridge through
// port, with address addr and a default route via gw.
func (l *Lab) plugIn(ns, port string, addr, gw netip.Addr) error {
	if err := l.addNetns(ns); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "-n", l.Underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", l.Underlay, "link", "set", port, "master", "br0", "up"},
		{"ip", "-n", ns, "addr", "add", addr.String() + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		{"ip", "-n", ns, "route", "add", "default", "via", gw.String()},
	}
	if l.opts.IPv6 {
		// The same host number on the IPv6 underlay; nodad, so the
		// address is usable at once rather than after duplicate detection.
		addr6 := l.underlayAddr6(int(addr.As4()[3]))
		cmds = append(cmds,
			[]string{"ip", "-n", ns, "addr", "add", addr6.String() + "/64", "dev", "eth0", "nodad"},
			[]string{"ip", "-n", ns, "-6", "route", "add", "default", "via", l.underlayAddr6(1).String()})
	}
	return RunAll(cmds...)
}

// PutConfig writes the network config into etcd.
func (l *Lab) PutConfig(ctx context.Context, config string) error {
	return l.store.PutConfig(ctx, []byte(config))
}

// Config is the network config the lab writes for its options.
func (l *Lab) Config() string {
	if l.opts.Config != "" {
		return l.opts.Config
	}
	if l.opts.IPv6Only {
		return fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, DefaultIPv6Network, l.opts.Backend)
	}
	if l.opts.IPv6 {
		return fmt.Sprintf(`{"Network":%q,"EnableIPv6":true,"IPv6Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, DefaultIPv6Network, l.opts.Backend)
	}
	return fmt.Sprintf(`{"Network":%q,"Backend":{"Type":%q}}`, DefaultNetwork, l.opts.Backend)
}

// Start writes the config, starts weftd on every host, waits until all are
// ready and puts a container behind each.
func (l *Lab) Start(ctx context.Context) error {
	if err := l.PutConfig(ctx, l.Config()); err != nil {
		return fmt.Errorf("putting the network config: %w", err)
	}
	for _, h := range l.WeftdHosts() {
		if err := l.StartWeftd(h); err != nil {
			return err
		}
	}
	for _, h := range l.WeftdHosts() {
		if err := l.WaitReady(ctx, h); err != nil {
			return err
		}
		if l.opts.Docker {
			continue
		}
		if err := l.AddContainer(h); err != nil {
			return err
		}
	}
	return nil
}

// WeftdHosts are the hosts that run weftd directly from the lab.
func (l *Lab) WeftdHosts() []*Host {
	if l.opts.WeftdHosts > 0 && l.opts.WeftdHosts < len(l.Hosts) {
		return l.Hosts[:l.opts.WeftdHosts]
	}
	return l.Hosts
}

// Store is a client on the lab's etcd, for tests that inspect or break it.
func (l *Lab) Store() *etcdstore.Store { return l.store }

// Close stops what the lab started and removes what it made.
func (l *Lab) Close() {
	for _, d := range l.dockerds {
		d.remove()
	}
	for _, p := range l.podmans {
		p.remove()
	}
	for _, h := range l.Hosts {
		l.StopWeftd(h, syscall.SIGKILL)
		if h.notify != nil {
			h.notify.Close()
		}
	}
	if l.store != nil {
		l.store.Close()
	}
	l.StopEtcd()
	for i := len(l.nsMade) - 1; i >= 0; i-- {
		run("ip", "netns", "del", l.nsMade[i])
	}
	if l.ownsDir {
		os.RemoveAll(l.Dir)
	}
}

// mountPoint makes sure dir exists on the machine for a host's private
// mount over it. It stays after the lab (an empty directory, as weft or
// wireguard-tools leave it on any host): removing a directory that is a
// mount point in other namespaces detaches those mounts (Linux 3.18 and
// later), which cut the hosts of another lab running in parallel off
// their private /run/wireguard and let their weftds configure each
// other's devices.
func (l *Lab) mountPoint(dir string) error {
	return os.MkdirAll(dir, 0o755)
}

// Exec runs a command in namespace ns and returns its combined output.
func Exec(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// RunAll runs each command in turn and stops at the first that fails,
// returning its output in the error.
func RunAll(cmds ...[]string) error {
	for _, c := range cmds {
		if err := run(c...); err != nil {
			return err
		}
	}
	return nil
}

// waitUntil polls cond every 50 ms until it holds or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// runID is a short random id that makes the names of one run unique.
func runID() string {
	id := make([]byte, 3)
	rand.Read(id)
	return hex.EncodeToString(id)
}
