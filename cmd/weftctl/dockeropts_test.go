package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const subnetEnv = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"

// TestDockerOptsAsTheScript compares with what mk-docker-opts.sh writes for
// the same subnet file (the script's documented output, leading space of
// the combined value included).
// dualStackLines are what weftd adds to the subnet file on a dual-stack
// network, as flanneld does.
const dualStackLines = "FLANNEL_IPV6_NETWORK=fc00:5::/48\nFLANNEL_IPV6_SUBNET=fc00:5:0:22::1/64\n"

func TestDockerOptsAsTheScript(t *testing.T) {
	tests := []struct {
		name, subnet string
		args         []string
		env          map[string]string
		want         string
	}{
		{"defaults", subnetEnv, nil, nil,
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"},
		{"systemd guide: -k DOCKER_NETWORK_OPTIONS", strings.Replace(subnetEnv, "IPMASQ=false", "IPMASQ=true", 1), []string{"-k", "DOCKER_NETWORK_OPTIONS"}, nil,
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"},
		{"combined only", subnetEnv, []string{"-c"}, nil, "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"},
		{"individual only", subnetEnv, []string{"-i"}, nil,
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"},
		{"without ip-masq", subnetEnv, []string{"-m", "-c"}, nil, "DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"},
		{"inherits the combined variable", subnetEnv, []string{"-c"}, map[string]string{"DOCKER_OPTS": "--debug"},
			"DOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"},
		{"daemon.json", subnetEnv, []string{"-format", "daemon-json"}, nil,
			"{\n  \"bip\": \"10.1.74.1/24\",\n  \"ip-masq\": true,\n  \"mtu\": 1472\n}\n"},
		{"dual stack", subnetEnv + dualStackLines, nil, nil,
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_IPV6=\"--ipv6 --fixed-cidr-v6=fc00:5:0:22::/64\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n" +
				"DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --ipv6 --fixed-cidr-v6=fc00:5:0:22::/64 --mtu=1472\"\n"},
		{"IPv6-only", "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n" + dualStackLines, []string{"-c"}, nil,
			"DOCKER_OPTS=\" --ip-masq=true --ipv6 --fixed-cidr-v6=fc00:5:0:22::/64 --mtu=1472\"\n"},
		{"dual stack daemon.json", subnetEnv + dualStackLines, []string{"-format", "daemon-json"}, nil,
			"{\n  \"bip\": \"10.1.74.1/24\",\n  \"fixed-cidr-v6\": \"fc00:5:0:22::/64\",\n  \"ip-masq\": true,\n  \"ipv6\": true,\n  \"mtu\": 1472\n}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			dir := t.TempDir()
			in, out := filepath.Join(dir, "subnet.env"), filepath.Join(dir, "docker_opts.env")
			os.WriteFile(in, []byte(tt.subnet), 0o644)
			if err := runDockerOpts(append([]string{"-f", in, "-d", out}, tt.args...), &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			if string(got) != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestDockerOptsBadSubnetFile(t *testing.T) {
	for name, content := range map[string]string{
		"missing":   "",
		"bad line":  "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1472\n",
		"no equals": "FLANNEL_NETWORK=10.1.0.0/16\njunk\n",
		"no mtu":    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			in, out := filepath.Join(dir, "subnet.env"), filepath.Join(dir, "docker_opts.env")
			if content != "" {
				os.WriteFile(in, []byte(content), 0o644)
			}
			err := runDockerOpts([]string{"-f", in, "-d", out}, &bytes.Buffer{}, &bytes.Buffer{})
			if err == nil {
				t.Fatal("accepted a bad subnet file")
			}
			if name == "bad line" && !strings.Contains(err.Error(), "line 2: FLANNEL_SUBNET") {
				t.Errorf("error does not name the line: %v", err)
			}
			if _, serr := os.Stat(out); serr == nil {
				t.Error("wrote output despite the error")
			}
		})
	}
}

// TestLeasesTableEscapesControls: what a hostile writer puts in etcd reaches
// the terminal escaped.
func TestLeasesTableEscapesControls(t *testing.T) {
	var out strings.Builder
	rows := []leaseRow{{Subnet: "10.5.1.0-24\x1b]0;pwned\x07", BackendType: "vx\u009b31mlan", Error: "bad\tvalue\r"}}
	if err := renderLeases(rows, &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, bad := range []string{"\x1b", "\x07", "\u009b", "\r", "bad\tvalue"} {
		if strings.Contains(got, bad) {
			t.Errorf("table passes %q through:\n%q", bad, got)
		}
	}
	if !strings.Contains(got, `10.5.1.0-24\x1b]0;pwned\a`) {
		t.Errorf("table does not show the escaped key:\n%s", got)
	}
}

// TestLeasesTableMarksSkipped: a lease weftd leaves out says why.
func TestLeasesTableMarksSkipped(t *testing.T) {
	var out strings.Builder
	rows := []leaseRow{{Subnet: "10.5.9.0/24", PublicIP: "127.0.0.1", BackendType: "host-gw", Skipped: "PublicIP 127.0.0.1 is a loopback address; no host can be reached there"}}
	if err := renderLeases(rows, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "SKIPPED: PublicIP 127.0.0.1 is a loopback address") {
		t.Errorf("table:\n%s", out.String())
	}
}
