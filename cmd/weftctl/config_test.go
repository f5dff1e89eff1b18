package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/lease/etcdtest"
)

func TestConfigPutRefusesInvalidBeforeEtcd(t *testing.T) {
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dir := t.TempDir()
	weftctl := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"-etcd-endpoints", srv.Endpoint, "-etcd-prefix", "/weft-test"}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","ListenPort":0}}`), 0o644)
	code, _, stderr := weftctl("config", "put", bad)
	if code == 0 || !strings.Contains(stderr, `key "Backend.ListenPort": 0 is not a UDP port`) || !strings.Contains(stderr, "nothing was written") {
		t.Fatalf("put of a bad file: code %d, %s", code, stderr)
	}
	if code, _, stderr := weftctl("config", "get"); code == 0 || !strings.Contains(stderr, "network config not found") {
		t.Fatalf("a bad config reached etcd: %d %s", code, stderr)
	}
	if code, out, _ := weftctl("config", "validate", bad); code == 0 || out != "" {
		t.Fatalf("validate accepted a bad file")
	}
	dual := filepath.Join(dir, "dual.json")
	os.WriteFile(dual, []byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48"}`), 0o644)
	if code, _, stderr := weftctl("config", "validate", dual); code == 0 || !strings.Contains(stderr, `key "EnableIPv6": the udp backend carries IPv4 only`) {
		t.Fatalf("validate of a dual-stack udp config = %d %q, want an error naming udp", code, stderr)
	}
	os.WriteFile(dual, []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fc00:5::1/48"}`), 0o644)
	if code, out, _ := weftctl("config", "validate", dual); code != 0 || !strings.Contains(out, `note: key "IPv6Network": fc00:5::1/48 has host bits set; using fc00:5::/48`) {
		t.Fatalf("validate of a dual-stack config = %d %q, want a note on the host bits", code, out)
	}
	good := filepath.Join(dir, "good.json")
	os.WriteFile(good, []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`), 0o644)
	if code, _, stderr := weftctl("config", "put", good); code != 0 {
		t.Fatalf("put of a good file: %s", stderr)
	}
	if code, out, _ := weftctl("config", "get"); code != 0 || strings.TrimSpace(out) != `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}` {
		t.Fatalf("config get = %d %q", code, out)
	}
}

// TestWeftctlEtcdFlagsAsWeftd: weftctl takes weftd's etcd environment and
// refuses TLS files with a plaintext endpoint before connecting.
func TestWeftctlEtcdFlagsAsWeftd(t *testing.T) {
	t.Setenv("FLANNELD_ETCD_ENDPOINTS", "http://10.0.0.1:2379")
	t.Setenv("WEFTD_ETCD_CAFILE", "/etc/weft/ca.pem")
	var stdout, stderr strings.Builder
	if code := run([]string{"leases"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), `etcd endpoint "http://10.0.0.1:2379" is plaintext`) {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
