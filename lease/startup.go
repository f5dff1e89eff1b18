package lease

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"time"
)

// Diagnoser is a Store that can say why it does not answer and where it
// looked, for the log line of a host waiting for it (etcdstore.Store: refused,
// x509 unknown authority, its endpoints).
type Diagnoser interface {
	Diagnose(ctx context.Context) error
	Endpoints() []string
}

// StartupRetry is how the start-up waits back off: from the first delay,
// doubling up to the max.
type StartupRetry struct {
	First, Max time.Duration
}

// DefaultStartupRetry waits 1 s, then 2, 4, ... up to 30 s between tries.
func DefaultStartupRetry() StartupRetry {
	return StartupRetry{First: time.Second, Max: 30 * time.Second}
}

// WaitForConfig polls the network config at key until it exists, parses
// and passes check. While it waits it changes nothing and says, once per
// back-off step, what it waits for: the config to be put, a fixed config
// (naming the problem), or the store (with the store's own diagnosis).
func WaitForConfig(ctx context.Context, store Store, key string, retry StartupRetry, log *slog.Logger, check func(*Config) error) (*Config, error) {
	backoff := NewBackoff(retry.First, retry.Max)
	for {
		raw, err := store.Config(ctx)
		if err == nil {
			cfg, perr := ParseConfig(raw)
			if perr == nil {
				perr = check(cfg)
			}
			if perr == nil {
				if cfg.BackendDefaulted {
					log.Warn(`network config has no Backend.Type; using "`+DefaultBackend+`" as flannel does`, "key", key)
				}
				for _, note := range cfg.Notes {
					log.Warn("network config: "+note, "key", key)
				}
				log.Info("network config loaded", "key", key, "network", cfg.Network, "subnet_len", cfg.SubnetLen, "backend", cfg.Backend.Type)
				return cfg, nil
			}
			err = perr
		}
		delay := backoff.Next()
		switch {
		case errors.Is(err, ErrNoConfig):
			log.Warn("waiting for the network config; put it with `weftctl config put` or etcdctl", "key", key, "retry_in", delay)
		case errors.Is(err, ErrInvalidConfig):
			log.Error("network config is invalid; waiting for a fixed one", "key", key, "err", err, "retry_in", delay)
		default:
			var endpoints []string
			if d, ok := store.(Diagnoser); ok {
				if cause := d.Diagnose(ctx); cause != nil {
					err = cause
				}
				endpoints = d.Endpoints()
			}
			log.Warn("waiting for etcd", "endpoints", endpoints, "err", err, "retry_in", delay)
		}
		if !sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
}

// ClaimWithRetry claims a subnet, waiting out store outages and a full
// pool; it gives up only when ctx ends.
func ClaimWithRetry(ctx context.Context, store Store, req ClaimRequest, retry StartupRetry, log *slog.Logger) (Lease, error) {
	backoff := NewBackoff(retry.First, retry.Max)
	for {
		l, err := Claim(ctx, store, req)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return Lease{}, ctx.Err()
		}
		delay := backoff.Next()
		log.Error("cannot lease a subnet yet; retrying", "err", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return Lease{}, ctx.Err()
		}
	}
}

// PreviousSubnet reads FLANNEL_SUBNET from an earlier run's subnet file, so
// a host whose lease vanished from the store (etcd wiped) asks for the same
// subnet and its containers keep their addresses. It returns the zero
// prefix when there is no usable value or the subnet no longer fits cfg.
// The file is read as flannel v0.28 reads it (ReadPreviousSubnets): a
// line or value it cannot use is skipped with a warning, not the file.
func PreviousSubnet(path string, cfg *Config, log *slog.Logger) netip.Prefix {
	prev, err := ReadPreviousSubnets(path)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log.Warn("ignoring unreadable subnet file", "path", path, "err", err)
		}
		return netip.Prefix{}
	}
	for _, p := range prev.Problems {
		log.Warn("subnet file: skipped what it cannot use", "path", path, "problem", p)
	}
	if prev.Subnet.IsValid() && !cfg.Fits(prev.Subnet) {
		log.Info("previous subnet does not fit the network config; a new one will be leased", "previous", prev.Subnet)
		return netip.Prefix{}
	}
	return prev.Subnet
}

// PreviousIPv6Subnet reads FLANNEL_IPV6_SUBNET likewise, for a dual-stack
// network; the zero prefix when there is none or it no longer fits.
func PreviousIPv6Subnet(path string, cfg *Config) netip.Prefix {
	prev, err := ReadPreviousSubnets(path)
	if err != nil || !cfg.EnableIPv6 || !cfg.Fits6(prev.IPv6Subnet) {
		return netip.Prefix{}
	}
	return prev.IPv6Subnet
}
