package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/lease/etcdstore"
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

// TestConfigGetEscapes: issue 42. A config anyone who can write etcd
// wrote reaches the operator's terminal escaped (an escape sequence in it
// would otherwise clear the screen or retitle the window); -o raw prints
// its exact bytes; a valid config prints as it is.
func TestConfigGetEscapes(t *testing.T) {
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	store, err := etcdstore.New(etcdstore.Options{Endpoints: []string{srv.Endpoint}, Prefix: "/weft-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	hostile := "{\"Network\":\"10.5.0.0/16\x1b[2J\x1b]0;owned\x07\"}\n"
	if err := store.PutConfig(context.Background(), []byte(hostile)); err != nil {
		t.Fatal(err)
	}
	weftctl := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := run(append([]string{"-etcd-endpoints", srv.Endpoint, "-etcd-prefix", "/weft-test"}, args...), &out, &errOut)
		return code, out.String()
	}
	if code, out := weftctl("config", "get"); code != 0 || strings.ContainsRune(out, 0x1b) || strings.ContainsRune(out, 0x07) ||
		!strings.Contains(out, `\x1b[2J`) {
		t.Errorf("config get = %d %q, want the escape sequences shown escaped", code, out)
	}
	if code, out := weftctl("config", "get", "-o", "raw"); code != 0 || out != hostile {
		t.Errorf("config get -o raw = %d %q, want the exact bytes %q", code, out, hostile)
	}
}
