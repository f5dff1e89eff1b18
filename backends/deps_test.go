package backends

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoEtcdBelowTheStore: the reconciler and every backend build without
// the etcd client (lease.Store is all they see; lease/etcdstore is the one
// package that talks to etcd), so a plan or a fake-kernel test never pulls
// in etcd and grpc.
func TestNoEtcdBelowTheStore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../mesh", "./...").CombinedOutput()
	if err != nil {
		t.Skipf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "go.etcd.io/") || strings.HasPrefix(pkg, "google.golang.org/grpc") {
			t.Errorf("mesh or a backend depends on %s", pkg)
		}
	}
}
