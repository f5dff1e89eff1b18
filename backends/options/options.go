// Package options holds the checks every backend applies to its "Backend"
// options, so each one says the same thing about the same mistake. It is
// pure: no system package is imported.
package options

import "fmt"

// Port returns the UDP port given by option name (nil: def), or an error
// naming the option.
func Port(name string, v *int, def int) (int, error) {
	if v == nil {
		return def, nil
	}
	if *v < 1 || *v > 65535 {
		return 0, fmt.Errorf(`key "Backend.%s": %d is not a UDP port (1-65535)`, name, *v)
	}
	return *v, nil
}

// MTU checks an "MTU" option: 0 (derive from the external link) or a
// usable IPv4 MTU.
func MTU(v int) error {
	if v != 0 && (v < 576 || v > 65535) {
		return fmt.Errorf(`key "Backend.MTU": %d is not between 576 and 65535`, v)
	}
	return nil
}
