package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/weftnet/weft/backends/wireguard"
	"github.com/weftnet/weft/keys"
	"github.com/weftnet/weft/lease"
	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/membership"
	"github.com/weftnet/weft/mesh"
)

// options are weftd's settings, named as flanneld's flags.
type options struct {
	machineIDFile     string
	requireEncryption bool
	// guard is this host's pin and note against the network config; one
	// for the process, across live switches.
	guard         *configGuard
	etcd          etcdstore.Options
	endpoints     string
	ifaces        []string
	ifaceRegex    []string
	ifaceCanReach string
	publicIP      string
	subnetFile    string
	renewMargin   time.Duration
	leaseTTL      time.Duration
	ipMasq        bool
	// randomFullyDisable is -ip-masq-fully-random-disable.
	randomFullyDisable bool
	// blackholeRoute is -ip-blackhole-route.
	blackholeRoute bool
	// publicIPv6 is accepted for flannel's unit files; it takes effect
	// with dual stack.
	publicIPv6    string
	iptablesSync  int
	forwardRules  bool
	healthzIP     string
	healthzPort   int
	pprof         bool
	resync        time.Duration
	cleanupOnExit bool
	keyFile       string
	// wgImpl overrides Backend.Implementation on this host ("": the config's).
	wgImpl string
	// behindNAT marks this host as behind NAT in its wireguard lease.
	behindNAT bool
	// tunnelSourceFilter drops VXLAN and IP-in-IP from sources that hold
	// no lease.
	tunnelSourceFilter bool
	logLevel           string
	version            bool
	// membershipCA is the file of trusted membership CA keys;
	// membershipMode how this host holds others to them.
	membershipCA   string
	membershipMode membership.Mode
}

// stringList is a repeatable flag that also splits on commas.
type stringList []string

// String is flag.Value's.
func (s *stringList) String() string { return strings.Join(*s, ",") }

// Set adds every comma-separated part of v.
func (s *stringList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*s = append(*s, part)
		}
	}
	return nil
}

// parseFlags reads args, then fills every flag not given on the command line
// from WEFTD_<NAME> or, for guides written for flannel, FLANNELD_<NAME>
// (upper case, dashes as underscores).
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var renewMinutes int
	fs.StringVar(&o.endpoints, "etcd-endpoints", "http://127.0.0.1:4001,http://127.0.0.1:2379",
		"comma-separated etcd endpoints")
	fs.StringVar(&o.etcd.Prefix, "etcd-prefix", etcdstore.DefaultPrefix, "etcd prefix holding config and subnets")
	fs.StringVar(&o.etcd.CAFile, "etcd-cafile", "", "CA file to verify etcd's server certificate")
	fs.StringVar(&o.etcd.CertFile, "etcd-certfile", "", "client certificate for etcd")
	fs.StringVar(&o.etcd.KeyFile, "etcd-keyfile", "", "client key for etcd")
	fs.StringVar(&o.etcd.Username, "etcd-username", "", "etcd user name")
	fs.StringVar(&o.etcd.Password, "etcd-password", "", "etcd password (visible in ps; prefer -etcd-password-file)")
	passwordFile := fs.String("etcd-password-file", "", "file holding the etcd password")
	fs.Var((*stringList)(&o.ifaces), "iface", "interface name or IP to use for inter-host traffic (repeatable)")
	fs.Var((*repeated)(&o.ifaceRegex), "iface-regex",
		"regex matching the interface's address or, failing that, its name (repeatable; tried after -iface)")
	fs.StringVar(&o.ifaceCanReach, "iface-can-reach", "", "use the interface that routes to this IP")
	fs.StringVar(&o.publicIP, "public-ip", "", "IP other hosts reach this host at (default: the interface's)")
	fs.StringVar(&o.subnetFile, "subnet-file", lease.DefaultSubnetFile, "file to write the subnet environment to")
	fs.IntVar(&renewMinutes, "subnet-lease-renew-margin", 60, "minutes before expiry to renew the lease")
	fs.DurationVar(&o.leaseTTL, "subnet-lease-ttl", lease.DefaultTTL, "lifetime of the subnet lease in etcd")
	fs.BoolVar(&o.ipMasq, "ip-masq", false, "masquerade traffic leaving the Network")
	fs.BoolVar(&o.randomFullyDisable, "ip-masq-fully-random-disable", false, "masquerade without --random-fully")
	fs.BoolVar(&o.blackholeRoute, "ip-blackhole-route", false,
		"keep a blackhole route for this host's subnet (re-added every -iptables-resync)")
	fs.StringVar(&o.publicIPv6, "public-ipv6", "",
		"IPv6 other hosts reach this host at (accepted for flannel's unit files; used once dual stack is on)")
	fs.IntVar(&o.iptablesSync, "iptables-resync", 5, "seconds between iptables rule checks")
	fs.BoolVar(&o.forwardRules, "iptables-forward-rules", true, "accept forwarded traffic to and from the Network")
	fs.StringVar(&o.healthzIP, "healthz-ip", "127.0.0.1", "address for /healthz, /readyz and /metrics")
	fs.IntVar(&o.healthzPort, "healthz-port", 8471, "port for /healthz, /readyz and /metrics (0 disables)")
	fs.BoolVar(&o.pprof, "debug-pprof", false,
		"also serve Go's profiles under /debug/pprof/ on the health endpoint (make profile)")
	fs.DurationVar(&o.resync, "resync-interval", mesh.DefaultResync,
		"how often to re-apply the data path even without changes")
	fs.StringVar(&o.keyFile, "wireguard-key-file", keys.DefaultPath,
		"WireGuard private key file (0600; created when missing); this host's ID and identity (the key its lease is "+
			"signed with) are kept beside it")
	fs.BoolVar(&o.requireEncryption, "require-encryption", false,
		"run only the wireguard backend with StrictEncryption, whatever the network config in etcd says: a config asking "+
			"for another backend or StrictEncryption off is refused (logged, shown in weftctl status); this host then "+
			"reaches only hosts that speak wireguard")
	fs.StringVar(&o.machineIDFile, "machine-id-file", "/etc/machine-id",
		"this machine's ID (systemd's), which this host's identity is made under: a copy of the identity found under "+
			"another machine ID (a cloned disk or image) is replaced, and the host claims a subnet of its own")
	fs.BoolVar(&o.tunnelSourceFilter, "tunnel-source-filter", true,
		"vxlan and ipip: accept tunnel packets only from the PublicIP and PublicIPv6 of current leases (nftables table "+
			"inet weft-tunnel; drops counted by source); false accepts them from anyone, as flannel does")
	fs.BoolVar(&o.behindNAT, "behind-nat", false,
		"this host is behind NAT (its -public-ip may not reach it): its wireguard lease says so, peers keep the "+
			"endpoint WireGuard finds for it and configure it even with on-demand peers, and it sends keepalives every 25 "+
			"s unless the config sets PersistentKeepaliveInterval")
	fs.StringVar(&o.wgImpl, "wireguard-implementation", "",
		"auto, kernel or userspace: this host's WireGuard, overriding the config's Backend.Implementation (a host whose "+
			"kernel lacks the module in a kernel-WireGuard cluster)")
	fs.StringVar(&o.membershipCA, "membership-ca", "",
		"file of the membership CA's public keys (one per line, from `weftctl ca create`; never read from etcd): "+
			"this host publishes its certificate and holds others to theirs, as -membership says")
	memberMode := fs.String("membership", "",
		"off, warn or enforce (default enforce with -membership-ca, else off): enforce peers only with leases whose "+
			"certificate a CA in -membership-ca signed, runs only a CA-sealed config and configures only CA-sealed "+
			"outside peers; warn logs what enforce would refuse and peers anyway (a migration)")
	fs.BoolVar(&o.cleanupOnExit, "cleanup-on-exit", false,
		"remove weft's devices and routes on exit (they stay by default)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	acceptGlogFlags(fs)
	kubeSubnetMgr := fs.Bool("kube-subnet-mgr", false, "not supported: weft leases subnets in etcd")

	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q; flags start with -, see weftd -help", fs.Arg(0))
	}
	if err := setFromEnvironment(fs, getenv); err != nil {
		return nil, err
	}
	o.renewMargin = time.Duration(renewMinutes) * time.Minute
	o.etcd.Endpoints = splitList(o.endpoints)
	if err := o.etcd.ReadPasswordFile(*passwordFile); err != nil {
		return nil, err
	}
	if err := o.etcd.CheckTLS(); err != nil {
		return nil, err
	}
	switch {
	case *kubeSubnetMgr:
		return nil, fmt.Errorf("-kube-subnet-mgr: weft leases subnets in etcd only; drop the flag and give -etcd-endpoints")
	case renewMinutes < 1 || renewMinutes > 1439:
		return nil, fmt.Errorf("-subnet-lease-renew-margin %d is out of range: minutes from 1 to 1439, as in flannel",
			renewMinutes)
	case o.publicIPv6 != "" && !isIPv6(o.publicIPv6):
		return nil, fmt.Errorf("-public-ipv6 %q is not an IPv6 address", o.publicIPv6)
	case o.leaseTTL < 5*time.Second:
		return nil, fmt.Errorf("-subnet-lease-ttl %s is too short; use at least 5s", o.leaseTTL)
	case o.healthzPort < 0 || o.healthzPort > 65535:
		return nil, fmt.Errorf("-healthz-port %d is not a port", o.healthzPort)
	case o.wgImpl != "" && !wireguard.ValidImplementation(o.wgImpl):
		return nil, fmt.Errorf("-wireguard-implementation %q is not one of auto, kernel, userspace", o.wgImpl)
	case o.iptablesSync < 1:
		return nil, fmt.Errorf("-iptables-resync %d must be at least 1 second", o.iptablesSync)
	}
	var err error
	if o.membershipMode, err = membershipMode(*memberMode, o.membershipCA); err != nil {
		return nil, err
	}
	o.guard = &configGuard{requireEncryption: o.requireEncryption}
	return o, nil
}

// membershipMode is the mode -membership names, enforce when only
// -membership-ca is given; warn and enforce need the CA file.
func membershipMode(text, caFile string) (membership.Mode, error) {
	if text == "" {
		if caFile == "" {
			return membership.Off, nil
		}
		return membership.Enforce, nil
	}
	mode, err := membership.ParseMode(text)
	if err == nil && mode != membership.Off && caFile == "" {
		err = fmt.Errorf("-membership %s needs -membership-ca, the file of the CA's public keys", mode)
	}
	return mode, err
}

// acceptGlogFlags defines the glog flags of flanneld's unit files, which
// weftd accepts and ignores.
func acceptGlogFlags(fs *flag.FlagSet) {
	glogFlags := []string{"logtostderr", "alsologtostderr", "add_dir_header", "one_output",
		"skip_headers", "skip_log_headers"}
	for _, name := range glogFlags {
		fs.Bool(name, name == "logtostderr", "ignored (flannel compatibility)")
	}
	for _, name := range []string{"log_dir", "v", "vmodule", "stderrthreshold", "log_backtrace_at", "log_file"} {
		fs.String(name, map[string]string{"v": "0"}[name], "ignored (flannel compatibility)")
	}
	fs.Uint64("log_file_max_size", 0, "ignored (flannel compatibility)")
}

// setFromEnvironment sets each flag not given on the command line from
// WEFTD_<FLAG>, else FLANNELD_<FLAG> (and the key file from
// WIREGUARD_KEY_FILE too).
func setFromEnvironment(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		// Debug switches come from the command line only: an environment
		// variable must not quietly open pprof on a production host.
		if given[f.Name] || f.Name == "debug-pprof" {
			return
		}
		env := strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		names := []string{"WEFTD_" + env, "FLANNELD_" + env}
		if f.Name == "wireguard-key-file" {
			names = append(names, "WIREGUARD_KEY_FILE")
		}
		for _, name := range names {
			if v := getenv(name); v != "" {
				if err := fs.Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Errorf("environment %s=%q: %w", name, v, err))
				}
				return
			}
		}
	})
	return errors.Join(errs...)
}

// repeated is a repeatable flag taken as given: -iface-regex values may
// hold commas ("^en[a-z0-9]{1,3}$").
type repeated []string

// String is flag.Value's.
func (r *repeated) String() string { return strings.Join(*r, " ") }

// Set adds v as it is.
func (r *repeated) Set(v string) error {
	*r = append(*r, v)
	return nil
}

func splitList(v string) []string {
	var s stringList
	s.Set(v)
	return s
}

func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && !a.Is4In6()
}
