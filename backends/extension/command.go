package extension

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Command is one run of a configured command: the command line, the
// variables it gets on top of weftd's environment, and its standard input
// (a newline follows it, as flannel writes it).
type Command struct {
	// Key names the command in errors ("SubnetAddCommand").
	Key   string
	Line  string
	Env   []string
	Stdin string
}

// Run runs c with a time limit and returns its standard output and error
// together, trimmed, as flannel does. The line is split on white space and
// each word gets $VAR and ${VAR} expanded from the environment: no shell
// parses it, so a value from a lease can never become shell syntax. On
// timeout the command's whole process group is killed (a script's children
// too), and the error says so.
func (c Command) Run(ctx context.Context, timeout time.Duration) (string, error) {
	words := strings.Fields(c.Line)
	if len(words) == 0 {
		return "", fmt.Errorf("%s is empty", c.Key)
	}
	env := append(commandEnviron(os.Environ()), c.Env...)
	lookup := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		lookup[k] = v
	}
	for i, w := range words {
		words[i] = os.Expand(w, func(k string) string { return lookup[k] })
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, words[0], words[1:]...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(c.Stdin + "\n")
	out := &cappedBuffer{limit: MaxOutput}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A child that keeps the output pipe open must not hold Run past the
	// kill.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	output := strings.TrimSpace(out.buf.String())
	if out.dropped > 0 {
		output += fmt.Sprintf(" [%d more bytes of output not kept]", out.dropped)
	}
	switch {
	case err == nil:
		return output, nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return output, fmt.Errorf("%s %q: killed after the %s CommandTimeout", c.Key, c.Line, timeout)
	case ctx.Err() != nil:
		return output, fmt.Errorf("%s %q: stopped: %w", c.Key, c.Line, ctx.Err())
	default:
		return output, fmt.Errorf("%s %q: %w", c.Key, c.Line, err)
	}
}

// MaxOutput is how much of a command's output weftd keeps: enough for any
// BackendData a lease can carry and for an error message; the rest is
// read and counted, never held (a command printing without end must not
// grow weftd).
const MaxOutput = 64 << 10

// cappedBuffer keeps the first limit bytes written to it and counts the
// rest.
type cappedBuffer struct {
	buf     bytes.Buffer
	limit   int
	dropped int64
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	keep := min(len(p), c.limit-c.buf.Len())
	if keep > 0 {
		c.buf.Write(p[:keep])
	}
	c.dropped += int64(len(p) - max(keep, 0))
	return len(p), nil
}

// secretEnv are variables of weftd's environment a command does not get:
// the etcd credentials weftd may have been given in its environment.
var secretEnv = map[string]bool{
	"WEFTD_ETCD_PASSWORD": true, "FLANNELD_ETCD_PASSWORD": true,
	"WEFTD_ETCD_USERNAME": true, "FLANNELD_ETCD_USERNAME": true,
	"ETCDCTL_PASSWORD": true, "ETCDCTL_USER": true,
}

// commandEnviron is weftd's environment without secretEnv: the commands
// are the network config's (anyone who can write etcd), not weftd's
// operator's, so they must not learn how to write etcd as weftd.
func commandEnviron(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !secretEnv[name] {
			out = append(out, kv)
		}
	}
	return out
}
