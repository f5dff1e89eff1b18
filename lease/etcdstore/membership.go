package etcdstore

import (
	"context"
	"fmt"
)

// Membership records live at <prefix>/membership/<name> (lease/membership).

// maxMembershipValue bounds a membership record read from etcd.
const maxMembershipValue = 256 << 10

// Membership returns the membership record name.
func (s *Store) Membership(ctx context.Context, name string) ([]byte, bool, error) {
	resp, err := s.client.Get(ctx, s.prefix+"/membership/"+name)
	if err != nil || len(resp.Kvs) == 0 {
		return nil, false, err
	}
	if v := resp.Kvs[0].Value; len(v) > maxMembershipValue {
		return nil, false, fmt.Errorf("%s/membership/%s is %d bytes, more than %d", s.prefix, name, len(v), maxMembershipValue)
	}
	return resp.Kvs[0].Value, true, nil
}

// PutMembership writes the membership record name.
func (s *Store) PutMembership(ctx context.Context, name string, value []byte) error {
	_, err := s.client.Put(ctx, s.prefix+"/membership/"+name, string(value))
	return err
}
