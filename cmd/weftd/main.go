// Command weftd is weft's per-host daemon: it leases this host's subnet from
// etcd, programs the data path to every other host, and keeps both current.
// Its flags are flanneld's; see DESIGN.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftnet/weft/backends/liveswitch"
)

// runsAgain reports whether a run ended to run again at once.
func runsAgain(err error) bool {
	return errors.Is(err, errSwitch) || errors.Is(err, errUnderlayChanged)
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	tuneGC(os.Getenv)
	o, err := parseFlags(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weftd:", err)
		os.Exit(2)
	}
	if o.version {
		fmt.Println("weftd", version)
		return
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "weftd: -log-level %q: use debug, info, warn or error\n", o.logLevel)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	log.Info("weftd starting", "version", version, "pid", os.Getpid())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// A stop asked for while waiting (for etcd, a config, a lease) is clean.
	// A switch of backend, or a change of the external interface or its
	// address, runs again at once, the data path left in place.
	// The backends one run hands the next at a live switch.
	var handOver liveswitch.HandOver
	err = errSwitch
	for runsAgain(err) {
		err = run(ctx, o, log, &handOver)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("weftd stopped", "err", err)
		os.Exit(1)
	}
	log.Info("weftd stopped")
}
