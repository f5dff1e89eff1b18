package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"

	"github.com/weftnet/weft/lease/etcdstore"
	"github.com/weftnet/weft/lease/etcdtest"
)

// RoleEnv, set to "etcd" in a child's environment, makes RunRole serve etcd.
const RoleEnv = "WEFTLAB_ROLE"

// RunRole runs the role a lab child was started for and reports whether it
// did; call it first thing in main or TestMain.
func RunRole() bool {
	if os.Getenv(RoleEnv) != "etcd" {
		return false
	}
	srv, err := etcdtest.Start(etcdtest.Options{Dir: os.Getenv("WEFTLAB_ETCD_DIR"), Host: os.Getenv("WEFTLAB_ETCD_HOST"),
		Name: os.Getenv("WEFTLAB_ETCD_NAME"), InitialCluster: os.Getenv("WEFTLAB_ETCD_CLUSTER"),
		ClientPort: etcdPort, PeerPort: etcdPort + 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab etcd:", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Close()
	os.Exit(0)
	return true
}

// Member is one etcd server of the lab, a real etcd (the embedded server)
// in a process of its own.
type Member struct {
	Name string // e1, e2, ...
	// Netns is the namespace it runs in: the underlay's for a lab with
	// one member, its own otherwise.
	Netns string
	Addr  netip.Addr
	// Dir keeps its data across restarts.
	Dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Endpoint is the member's client URL.
func (m *Member) Endpoint() string { return fmt.Sprintf("http://%s:%d", m.Addr, etcdPort) }

func (m *Member) peerURL() string { return fmt.Sprintf("http://%s:%d", m.Addr, etcdPort+1) }

// Running reports whether the member's process is up.
func (m *Member) Running() bool { return m.cmd != nil }

// addMembers lays out the etcd members: one in the underlay namespace at
// its gateway address, or each in a namespace of its own (.2, .3, ...).
func (l *Lab) addMembers(gw netip.Addr) error {
	n := max(l.opts.EtcdMembers, 1)
	for i := 1; i <= n; i++ {
		m := &Member{Name: fmt.Sprintf("e%d", i), Netns: l.Underlay, Addr: gw, Dir: filepath.Join(l.Dir, "etcd")}
		if n > 1 {
			m.Netns, m.Addr, m.Dir = fmt.Sprintf("wl%s-e%d", l.ID, i), l.underlayAddr(1+i), filepath.Join(l.Dir, "etcd-"+m.Name)
			if err := l.plugIn(m.Netns, m.Name, m.Addr, gw); err != nil {
				return err
			}
		}
		l.Members = append(l.Members, m)
	}
	return nil
}

// initialCluster is etcd's --initial-cluster for the lab's members.
func (l *Lab) initialCluster() string {
	var parts []string
	for _, m := range l.Members {
		parts = append(parts, m.Name+"="+m.peerURL())
	}
	return strings.Join(parts, ",")
}

// StartMember starts one member (its data stays across restarts); it does
// not wait for it to serve: a member of a cluster serves only once a
// quorum is up.
func (l *Lab) StartMember(m *Member) error {
	if m.cmd != nil {
		return nil
	}
	cmd := exec.Command("ip", "netns", "exec", m.Netns, l.opts.Self)
	cmd.Env = append(os.Environ(), RoleEnv+"=etcd", "WEFTLAB_ETCD_DIR="+m.Dir, "WEFTLAB_ETCD_HOST="+m.Addr.String(),
		"WEFTLAB_ETCD_NAME="+m.Name, "WEFTLAB_ETCD_CLUSTER="+l.initialCluster())
	done, err := startChild(cmd, filepath.Join(l.Dir, "etcd-"+m.Name+".log"))
	if err != nil {
		return fmt.Errorf("starting etcd member %s: %w", m.Name, err)
	}
	m.cmd, m.done = cmd, done
	return nil
}

// StopMember stops one member: SIGTERM for a clean stop, SIGKILL for a
// crash. Its data stays for StartMember.
func (l *Lab) StopMember(m *Member, sig syscall.Signal) {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(sig)
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.done
	}
	m.cmd = nil
}

// StartEtcd starts every member, connects the lab's client and waits until
// the cluster serves.
func (l *Lab) StartEtcd() error {
	for _, m := range l.Members {
		if err := l.StartMember(m); err != nil {
			return err
		}
	}
	if l.store == nil {
		var err error
		if l.store, err = etcdstore.New(etcdstore.Options{Endpoints: l.EtcdEndpoints(), Dial: l.dialUnderlay}); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return waitUntil(ctx, 60*time.Second, func() bool {
		_, _, err := l.store.List(ctx)
		return err == nil
	})
}

// StopEtcd stops every member at once, as a cluster is shut down (one by
// one, the last members would wait for a quorum that is gone); their data
// stays for StartEtcd.
func (l *Lab) StopEtcd() {
	var wg sync.WaitGroup
	for _, m := range l.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.StopMember(m, syscall.SIGTERM)
		}()
	}
	wg.Wait()
}

// CutMember takes a member off the underlay (its link down): it can reach
// neither the other members nor any weftd, and they cannot reach it.
func (l *Lab) CutMember(m *Member) error {
	return run("ip", "-n", m.Netns, "link", "set", "eth0", "down")
}

// ReconnectMember puts a member cut off by CutMember back on the underlay.
func (l *Lab) ReconnectMember(m *Member) error {
	return RunAll(
		[]string{"ip", "-n", m.Netns, "link", "set", "eth0", "up"},
		[]string{"ip", "-n", m.Netns, "route", "replace", "default", "via", l.underlayAddr(1).String()},
	)
}

// etcdClient is a plain etcd client on the members, for what the lease
// store does not do (member status, snapshots).
func (l *Lab) etcdClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: l.EtcdEndpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(l.dialUnderlay)}})
}

// Leader is the member that leads the cluster now, asked of each running
// member until one answers.
func (l *Lab) Leader(ctx context.Context) (*Member, error) {
	c, err := l.etcdClient()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var errs []error
	byID := map[uint64]*Member{}
	var leader uint64
	for _, m := range l.Members {
		if m.cmd == nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Status(sctx, m.Endpoint())
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.Name, err))
			continue
		}
		byID[st.Header.MemberId] = m
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if m := byID[leader]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("no leader among the running members: %w", errors.Join(errs...))
}

// Snapshot saves the cluster's data as it is now to file, as etcdctl
// snapshot save does.
func (l *Lab) Snapshot(ctx context.Context, file string) error {
	c, err := l.etcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.Snapshot(ctx)
	if err != nil {
		return err
	}
	defer rc.Close()
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, rc); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// RestoreEtcd rebuilds every member from a snapshot, as an operator does
// after losing the cluster: all members stop, each data directory is
// replaced by etcdutl's snapshot restore of file (the store's revision goes
// back to the snapshot's), and the members start as a new cluster.
func (l *Lab) RestoreEtcd(file string) error {
	// The cluster being replaced is killed, not shut down: a graceful stop
	// hands leadership around while members leave, and a leader elected
	// meanwhile could expire leases the hosts cannot renew during it.
	for _, m := range l.Members {
		l.StopMember(m, syscall.SIGKILL)
	}
	for _, m := range l.Members {
		if err := os.RemoveAll(m.Dir); err != nil {
			return err
		}
		err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
			SnapshotPath: file, Name: m.Name, OutputDataDir: m.Dir, PeerURLs: []string{m.peerURL()},
			InitialCluster: l.initialCluster(), InitialClusterToken: etcdtest.ClusterToken,
		})
		if err != nil {
			return fmt.Errorf("restoring member %s from %s: %w", m.Name, file, err)
		}
	}
	return l.StartEtcd()
}

// dialUnderlay opens a TCP connection from inside the underlay namespace.
func (l *Lab) dialUnderlay(ctx context.Context, addr string) (conn net.Conn, err error) {
	err = inNetns(l.Underlay, func() error {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return conn, err
}
