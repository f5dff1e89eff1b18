package main

import (
	"errors"
)

// A live switch of Backend.Type (backends/liveswitch): when the network
// config asks for another backend, or other options, watchBackendType
// ends the run with errSwitch and main runs again at once, in process,
// the data path left in place; the run hands its backends to the next
// through main's liveswitch.HandOver.

// errSwitch ends a run whose network config now asks for another backend
// (or other options); main runs again at once.
var errSwitch = errors.New("the network config's backend changed")
