// Package extension is flannel's extension backend: the data path is the
// operator's own commands. PreStartupCommand's output is published as the
// lease's BackendData (a JSON string, as flannel writes it),
// PostStartupCommand runs once this host holds its lease, and
// SubnetAddCommand and SubnetRemoveCommand run for each peer that comes,
// changes or goes, with the peer's subnet and address in the environment and
// its BackendData on standard input.
//
// Commands run as flannel v0.28 runs them: split on white space and started
// directly, not through a shell, with $VAR and ${VAR} expanded from the
// environment in the arguments. Unlike flannel's, each has a time limit
// (CommandTimeout), and the peer commands run in a worker goroutine of their
// own: a slow or failing command delays only the commands queued behind it,
// never the lease loop, and a failed one runs again at the next resync.
//
// options.go parses the Backend object; command.go runs one command;
// plan.go is pure (which peers' commands to run); apply.go is the backend
// and its worker.
package extension
