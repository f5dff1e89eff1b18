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
	env := append(os.Environ(), c.Env...)
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
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A child that keeps the output pipe open must not hold Run past the
	// kill.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	output := strings.TrimSpace(out.String())
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
