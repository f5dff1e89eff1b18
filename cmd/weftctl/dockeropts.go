package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/weftnet/weft/lease"
)

// dockerOptsFlags are mk-docker-opts.sh's flags, with its defaults.
type dockerOptsFlags struct {
	subnetFile  string
	out         string
	combinedKey string
	combined    bool
	individual  bool
	noMasq      bool
	format      string
}

// runDockerOpts does what flannel's mk-docker-opts.sh does: turn the
// subnet file into docker daemon options. It writes nothing when the
// subnet file is missing or malformed.
func runDockerOpts(args []string, stdout, stderr io.Writer) error {
	var f dockerOptsFlags
	fs := flag.NewFlagSet("docker-opts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.subnetFile, "f", lease.DefaultSubnetFile, "subnet file written by weftd (FLANNEL-ENV-FILE)")
	fs.StringVar(&f.out, "d", "/run/docker_opts.env", "file to write the docker options to (- for stdout)")
	fs.StringVar(&f.combinedKey, "k", "DOCKER_OPTS", "name of the combined options variable")
	fs.BoolVar(&f.combined, "c", false, "write only the combined options variable")
	fs.BoolVar(&f.individual, "i", false, "write only the individual DOCKER_OPT_* variables")
	fs.BoolVar(&f.noMasq, "m", false, "leave out --ip-masq")
	fs.StringVar(&f.format, "format", "env", "env (as mk-docker-opts.sh) or daemon-json (for /etc/docker/daemon.json)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	data, err := os.ReadFile(f.subnetFile)
	if err != nil {
		return fmt.Errorf("reading the subnet file (is weftd running?): %w", err)
	}
	env, err := lease.ParseSubnetEnv(data)
	if err != nil {
		return fmt.Errorf("%s: %w; nothing written", f.subnetFile, err)
	}
	var out []byte
	switch f.format {
	case "env":
		out = []byte(dockerOptsEnv(env, f, os.Getenv(f.combinedKey)))
	case "daemon-json":
		out, err = dockerDaemonJSON(env, f.noMasq)
	default:
		return fmt.Errorf("-format %q: use env or daemon-json", f.format)
	}
	if err != nil {
		return err
	}
	if f.out == "-" {
		_, err = stdout.Write(out)
		return err
	}
	return lease.WriteFileAtomic(f.out, out, 0o644)
}

// bridgeCIDR is FLANNEL_SUBNET as written: the bridge's address and length.
func bridgeCIDR(env lease.SubnetEnv) string {
	return netip.PrefixFrom(env.Subnet.Addr().Next(), env.Subnet.Bits()).String()
}

// dockerOptsEnv renders the script's output byte for byte. The script
// lists DOCKER_OPT_* variables in `set` order (alphabetical) and builds the
// combined value by appending " $value" to the inherited combined variable.
func dockerOptsEnv(env lease.SubnetEnv, f dockerOptsFlags, inherited string) string {
	individual, combined := f.individual, f.combined
	if !individual && !combined {
		individual, combined = true, true
	}
	type opt struct{ name, value string }
	var opts []opt
	if env.Subnet.IsValid() { // none on an IPv6-only network: docker keeps its own IPv4 bridge
		opts = append(opts, opt{"DOCKER_OPT_BIP", "--bip=" + bridgeCIDR(env)})
	}
	if !f.noMasq {
		// weft masquerades (FLANNEL_IPMASQ=true), so docker must not.
		opts = append(opts, opt{"DOCKER_OPT_IPMASQ", fmt.Sprintf("--ip-masq=%v", !env.IPMasq)})
	}
	if env.IPv6Subnet.IsValid() {
		// Beyond mk-docker-opts.sh, which predates flannel's IPv6:
		// containers get addresses of this host's IPv6 subnet too.
		opts = append(opts, opt{"DOCKER_OPT_IPV6", "--ipv6 --fixed-cidr-v6=" + env.IPv6Subnet.String()})
	}
	opts = append(opts, opt{"DOCKER_OPT_MTU", fmt.Sprintf("--mtu=%d", env.MTU)})
	var b strings.Builder
	all := inherited
	if all != "" {
		all += " "
	}
	for _, o := range opts {
		if individual {
			fmt.Fprintf(&b, "%s=\"%s\"\n", o.name, o.value)
		}
		all += " " + o.value
	}
	if combined {
		fmt.Fprintf(&b, "%s=\"%s\"\n", f.combinedKey, all)
	}
	return b.String()
}

// dockerDaemonJSON renders the same settings as daemon.json keys.
func dockerDaemonJSON(env lease.SubnetEnv, noMasq bool) ([]byte, error) {
	settings := map[string]any{"mtu": env.MTU}
	if env.Subnet.IsValid() {
		settings["bip"] = bridgeCIDR(env)
	}
	if !noMasq {
		settings["ip-masq"] = !env.IPMasq
	}
	if env.IPv6Subnet.IsValid() {
		settings["ipv6"], settings["fixed-cidr-v6"] = true, env.IPv6Subnet.String()
	}
	out, err := json.MarshalIndent(settings, "", "  ")
	return append(out, '\n'), err
}
