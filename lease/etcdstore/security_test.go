package etcdstore_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/etcdtest"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weft test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: dir}
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", der)
	return ca
}

// issue writes name.pem and name-key.pem signed by the CA.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func tryList(t *testing.T, opts etcdstore.Options) error {
	t.Helper()
	s, err := etcdstore.New(opts)
	if err != nil {
		return err
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, _, err = s.List(ctx)
	return err
}

func TestEtcdTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir)
	serverCert, serverKey := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)
	caFile := filepath.Join(dir, "ca.pem")

	t.Run("client certificates", func(t *testing.T) {
		srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir(), CertFile: serverCert, KeyFile: serverKey, ClientCA: caFile})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		ok := etcdstore.Options{Endpoints: []string{srv.Endpoint}, CAFile: caFile, CertFile: clientCert, KeyFile: clientKey}
		if err := tryList(t, ok); err != nil {
			t.Fatalf("with the right CA and client certificate: %v", err)
		}
		noCert := ok
		noCert.CertFile, noCert.KeyFile = "", ""
		if err := tryList(t, noCert); err == nil {
			t.Fatal("a client without a certificate was let in")
		}
		other := newCA(t, t.TempDir())
		wrongCA := ok
		wrongCA.CAFile = filepath.Join(other.dir, "ca.pem")
		if err := tryList(t, wrongCA); err == nil {
			t.Fatal("a server certificate from an unknown CA was accepted")
		}
		// The client only times out; Diagnose names the cause.
		s, err := etcdstore.New(wrongCA)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.Diagnose(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("Diagnose with a wrong CA = %v", err)
		}
		good, _ := etcdstore.New(ok)
		defer good.Close()
		if err := good.Diagnose(context.Background()); err != nil {
			t.Fatalf("Diagnose with the right CA = %v", err)
		}
		half := ok
		half.KeyFile = ""
		if err := tryList(t, half); err == nil || err.Error() != "-etcd-certfile and -etcd-keyfile go together; set both or neither" {
			t.Fatalf("cert without key: %v", err)
		}
	})

	t.Run("server TLS with a CA only", func(t *testing.T) {
		srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir(), CertFile: serverCert, KeyFile: serverKey})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		if err := tryList(t, etcdstore.Options{Endpoints: []string{srv.Endpoint}, CAFile: caFile}); err != nil {
			t.Fatalf("CA-only TLS: %v", err)
		}
	})
}

func TestEtcdUserPassword(t *testing.T) {
	srv, err := etcdtest.Start(etcdtest.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()
	admin, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	if err := tryList(t, etcdstore.Options{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "s3cret"}); err != nil {
		t.Fatalf("with the right password: %v", err)
	}
	if err := tryList(t, etcdstore.Options{Endpoints: []string{srv.Endpoint}, Username: "root", Password: "wrong"}); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	if err := tryList(t, etcdstore.Options{Endpoints: []string{srv.Endpoint}}); err == nil {
		t.Fatal("no credentials were accepted with auth on")
	}
}
