package leasetest

import (
	"bytes"
	"context"
)

// Membership records, kept as etcdstore.Store keeps them under
// <prefix>/membership/.

// Membership returns the membership record name.
func (s *Store) Membership(_ context.Context, name string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return nil, false, err
	}
	v, ok := s.membership[name]
	return bytes.Clone(v), ok, nil
}

// PutMembership writes the membership record name.
func (s *Store) PutMembership(_ context.Context, name string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	if s.membership == nil {
		s.membership = map[string][]byte{}
	}
	s.membership[name] = bytes.Clone(value)
	return nil
}
