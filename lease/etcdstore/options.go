package etcdstore

import (
	"fmt"
	"os"
	"strings"
)

// secure reports whether an endpoint speaks TLS.
func secure(endpoint string) bool {
	return strings.HasPrefix(endpoint, "https://") || strings.HasPrefix(endpoint, "unixs://")
}

// CheckTLS refuses TLS files given with a plaintext endpoint: etcd's
// client would connect without TLS and the user who asked for it would
// not know (flannel accepts this silently; weft refuses on purpose).
func (o Options) CheckTLS() error {
	if o.CAFile == "" && o.CertFile == "" && o.KeyFile == "" {
		return nil
	}
	for _, e := range o.Endpoints {
		if !secure(e) {
			return fmt.Errorf("etcd endpoint %q is plaintext, but -etcd-cafile/-etcd-certfile/-etcd-keyfile ask for TLS: write it as https://%s (-etcd-endpoints), or drop the TLS flags",
				e, strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "unix://"))
		}
	}
	return nil
}

// PlaintextPassword returns the first plaintext endpoint the password
// would be sent to in clear ("" when none or no password).
func (o Options) PlaintextPassword() string {
	if o.Password == "" {
		return ""
	}
	for _, e := range o.Endpoints {
		if !secure(e) {
			return e
		}
	}
	return ""
}

// ReadPasswordFile sets Password from path (-etcd-password-file), so the
// password is not on the command line for `ps` to show.
func (o *Options) ReadPasswordFile(path string) error {
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-etcd-password-file: %w", err)
	}
	o.Password = strings.TrimRight(string(data), "\r\n")
	return nil
}
