package membership

import "context"

// Store is where the membership records live, at <prefix>/membership/<name>
// in etcd (flannel reads only config and subnets/): "config" (the config's
// seal), "revoked" (the revocation list) and "hosts/<host ID>" (each
// host's certificate). Anyone who can write etcd can delete them (a
// denial of service), nobody without a CA key can forge them.
type Store interface {
	// Membership returns the record name; ok is false when there is none.
	Membership(ctx context.Context, name string) (value []byte, ok bool, err error)
	// PutMembership writes the record name.
	PutMembership(ctx context.Context, name string, value []byte) error
}

// The records' names.
const (
	ConfigSealName  = "config"
	RevocationsName = "revoked"
)

// CertName is the record name of host's certificate.
func CertName(host string) string { return "hosts/" + host }
