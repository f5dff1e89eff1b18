// Package etcdtest runs a real etcd server in-process for tests and the lab,
// so nothing outside the repository is needed to exercise the etcd store.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is a running single-member etcd.
type Server struct {
	etcd *embed.Etcd
	// Endpoint is the client URL, e.g. http://127.0.0.1:41234.
	Endpoint string
	// Dir holds the data; starting again on the same Dir keeps the data.
	Dir string
}

// ClusterToken is the --initial-cluster-token of clusters started here
// (and of members restored from a snapshot to join them).
const ClusterToken = "weft-lab"

// Options say where etcd listens and keeps its data.
type Options struct {
	// Dir is the data directory (required).
	Dir string
	// Host is the address to listen on; 127.0.0.1 when empty.
	Host string
	// ClientPort and PeerPort; a free port each when zero.
	ClientPort, PeerPort int
	// Name is the member's name ("weft-test" when empty).
	Name string
	// InitialCluster, for a member of a cluster, is every member's
	// name=peerURL, comma-separated; empty for a cluster of one.
	InitialCluster string
	// TLS, when set, serves clients over TLS with these files; ClientCA
	// set requires client certificates signed by it.
	CertFile, KeyFile, ClientCA string
}

// Start launches etcd and waits until it serves.
func Start(opts Options) (*Server, error) {
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	var err error
	if opts.ClientPort == 0 {
		if opts.ClientPort, err = FreePort(host); err != nil {
			return nil, err
		}
	}
	if opts.PeerPort == 0 {
		if opts.PeerPort, err = FreePort(host); err != nil {
			return nil, err
		}
	}
	scheme := "http"
	if opts.CertFile != "" {
		scheme = "https"
	}
	clientURL := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, fmt.Sprint(opts.ClientPort))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort(host, fmt.Sprint(opts.PeerPort))}

	cfg := embed.NewConfig()
	cfg.Name = opts.Name
	if cfg.Name == "" {
		cfg.Name = "weft-test"
	}
	cfg.Dir = opts.Dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	if opts.InitialCluster != "" {
		cfg.InitialCluster = opts.InitialCluster
		cfg.InitialClusterToken = ClusterToken
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.Logger = "zap"
	if opts.CertFile != "" {
		cfg.ClientTLSInfo.CertFile = opts.CertFile
		cfg.ClientTLSInfo.KeyFile = opts.KeyFile
		if opts.ClientCA != "" {
			cfg.ClientTLSInfo.TrustedCAFile = opts.ClientCA
			cfg.ClientTLSInfo.ClientCertAuth = true
		}
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting etcd in %s: %w", opts.Dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("etcd in %s did not become ready in 60s (a cluster member waits for a quorum of its peers)", opts.Dir)
	}
	return &Server{etcd: e, Endpoint: clientURL.String(), Dir: opts.Dir}, nil
}

// Close stops the server and waits for it; the data stays in Dir.
func (s *Server) Close() { s.etcd.Close() }

// FreePort asks the kernel for a currently unused TCP port on host.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
