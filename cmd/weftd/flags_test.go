package main

import (
	"io"
	"os"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-iface", "eth1", "-logtostderr", "-v", "2", "-subnet-lease-renew-margin", "30"},
		env(map[string]string{
			"FLANNELD_ETCD_ENDPOINTS": "http://10.0.0.1:2379,http://10.0.0.2:2379",
			"WEFTD_IP_MASQ":           "true",
			"FLANNELD_IFACE":          "ignored-because-flag-given",
			"WEFTD_ETCD_PREFIX":       "/weft/net",
			"FLANNELD_ETCD_PREFIX":    "/loses/to/weftd",
		}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.etcd.Endpoints, " ") != "http://10.0.0.1:2379 http://10.0.0.2:2379" {
		t.Errorf("endpoints %v", o.etcd.Endpoints)
	}
	if !o.ipMasq || o.etcd.Prefix != "/weft/net" || strings.Join(o.ifaces, ",") != "eth1" || o.renewMargin != 30*time.Minute {
		t.Errorf("options %+v", o)
	}
	if o.subnetFile != "/run/flannel/subnet.env" || o.leaseTTL != 24*time.Hour || o.healthzIP != "127.0.0.1" {
		t.Errorf("defaults wrong: %+v", o)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	if o, err := parseFlags([]string{"-membership-ca", "ca.pub"}, env(nil), io.Discard); err != nil || o.membershipMode.String() != "enforce" {
		t.Errorf("-membership-ca alone: %v, %v; want enforce mode", o.membershipMode, err)
	}
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"-no-such-flag"}, nil, "flag provided but not defined: -no-such-flag"},
		{[]string{"-subnet-lease-ttl", "1s"}, nil, "-subnet-lease-ttl 1s is too short"},
		{[]string{"-healthz-port", "70000"}, nil, "-healthz-port 70000 is not a port"},
		{nil, map[string]string{"WEFTD_IP_MASQ": "sometimes"}, `environment WEFTD_IP_MASQ="sometimes"`},
		{[]string{"stray"}, nil, `unexpected argument "stray"`},
		{[]string{"-membership", "enforce"}, nil, "-membership enforce needs -membership-ca"},
		{[]string{"-membership", "strict", "-membership-ca", "ca.pub"}, nil, `-membership "strict": use off, warn or enforce`},
	}
	for _, tt := range tests {
		_, err := parseFlags(tt.args, env(tt.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseFlags(%v, %v) = %v, want %q", tt.args, tt.env, err, tt.want)
		}
	}
}

// TestFlannelFlags: flanneld's own flags in a flannel unit file start weftd
// and mean what they mean there.
func TestFlannelFlags(t *testing.T) {
	o, err := parseFlags([]string{"-ip-masq", "-ip-masq-fully-random-disable", "-ip-blackhole-route", "-public-ipv6", "fd00::11",
		"-log_backtrace_at", "", "-v", "1", "-skip_headers"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.randomFullyDisable || !o.blackholeRoute || o.publicIPv6 != "fd00::11" {
		t.Errorf("options %+v", o)
	}
	for _, m := range []string{"1", "1439"} {
		if _, err := parseFlags([]string{"-subnet-lease-renew-margin", m}, env(nil), io.Discard); err != nil {
			t.Errorf("-subnet-lease-renew-margin %s: %v", m, err)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-subnet-lease-renew-margin", "0"}, "-subnet-lease-renew-margin 0 is out of range: minutes from 1 to 1439"},
		{[]string{"-subnet-lease-renew-margin", "-5"}, "-subnet-lease-renew-margin -5 is out of range"},
		{[]string{"-subnet-lease-renew-margin", "1440"}, "-subnet-lease-renew-margin 1440 is out of range"},
		{[]string{"-public-ipv6", "10.0.0.1"}, `-public-ipv6 "10.0.0.1" is not an IPv6 address`},
		{[]string{"-kube-subnet-mgr"}, "weft leases subnets in etcd only"},
		{[]string{"-wireguard-implementation", "Kernel"}, `-wireguard-implementation "Kernel" is not one of auto, kernel, userspace`},
	} {
		if _, err := parseFlags(tt.args, env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseFlags(%v) = %v, want %q", tt.args, err, tt.want)
		}
	}
}

// TestPprofOnlyFromTheCommandLine: the environment cannot switch on the
// profiler.
func TestPprofOnlyFromTheCommandLine(t *testing.T) {
	o, err := parseFlags(nil, env(map[string]string{"WEFTD_DEBUG_PPROF": "true", "FLANNELD_DEBUG_PPROF": "true"}), io.Discard)
	if err != nil || o.pprof {
		t.Errorf("pprof on from the environment: %v %v", o.pprof, err)
	}
	if o, err := parseFlags([]string{"-debug-pprof"}, env(nil), io.Discard); err != nil || !o.pprof {
		t.Errorf("-debug-pprof: %v %v", o.pprof, err)
	}
}

// TestEtcdTLSAndPassword: TLS files with a plaintext endpoint are refused,
// naming the endpoint and the flag; the password can come from a file.
func TestEtcdTLSAndPassword(t *testing.T) {
	_, err := parseFlags([]string{"-etcd-endpoints", "http://10.0.0.1:2379", "-etcd-cafile", "/etc/weft/ca.pem"}, env(nil), io.Discard)
	if err == nil || !strings.Contains(err.Error(), `etcd endpoint "http://10.0.0.1:2379" is plaintext`) || !strings.Contains(err.Error(), "https://10.0.0.1:2379") {
		t.Errorf("TLS files with http://: %v", err)
	}
	if _, err := parseFlags([]string{"-etcd-endpoints", "https://10.0.0.1:2379", "-etcd-cafile", "/etc/weft/ca.pem"}, env(nil), io.Discard); err != nil {
		t.Errorf("TLS files with https://: %v", err)
	}
	file := t.TempDir() + "/pw"
	os.WriteFile(file, []byte("s3cret\n"), 0o600)
	o, err := parseFlags([]string{"-etcd-password-file", file}, env(nil), io.Discard)
	if err != nil || o.etcd.Password != "s3cret" || o.etcd.PlaintextPassword() != "http://127.0.0.1:4001" {
		t.Errorf("password file: %q %q %v", o.etcd.Password, o.etcd.PlaintextPassword(), err)
	}
}

// TestTuneGC: weftd collects at 25% growth unless the operator's GOGC
// says otherwise.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	tuneGC(func(string) string { return "" })
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GOGC %d without the environment's, want %d", got, gcPercent)
	}
	tuneGC(env(map[string]string{"GOGC": "200"}))
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC %d after the environment set one, want it left alone (100 here)", got)
	}
}
