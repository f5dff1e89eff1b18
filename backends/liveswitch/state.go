package liveswitch

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
)

// Spec is a backend as the config names it: its Type and the whole
// Backend object.
type Spec struct {
	Type string
	Raw  json.RawMessage
}

// sameAs reports whether s and o build the same backend: one Type, and
// Backend objects equal but for insignificant white space.
func (s Spec) sameAs(o Spec) bool {
	return s.Type == o.Type && CompactJSON(s.Raw) == CompactJSON(o.Raw)
}

// CompactJSON is raw without insignificant white space, for comparing;
// raw itself when it is not JSON.
func CompactJSON(raw []byte) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// StateFile is where a host keeps what a switch must remember and no one
// else should read (State): beside the subnet file.
func StateFile(subnetFile string) string {
	return filepath.Join(filepath.Dir(subnetFile), "weft-backends.json")
}

// State is the state file's content.
type State struct {
	// Backends are the Backend objects the host runs, primary first: a
	// legacy backend's options (a VNI, a port, a PSK) are not in the
	// config any more and are not the peers' to read in the lease.
	Backends []Spec
	// CarriedMTU is the MTU the primary backend's device carries for
	// containers started under a previous backend with a larger one
	// (wireguard.Backend.CarryMTU); 0 for none. Docker keeps its
	// containers' MTU until it restarts, which weftd cannot see, so it is
	// kept for as long as the primary backend stays.
	CarriedMTU int `json:",omitempty"`
}

// ReadState reads the state file at path; a missing or unreadable one is
// an empty State (a host that never switched).
func ReadState(path string) State {
	var st State
	data, err := os.ReadFile(path)
	if err == nil && json.Unmarshal(data, &st) != nil {
		st = State{}
	}
	return st
}

// WriteState writes st to the state file at path, readable by root alone.
func WriteState(path string, st State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}
