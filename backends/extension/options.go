package extension

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// DefaultCommandTimeout bounds every command. flannel waits for ever, so a
// hung command stops its backend for good. The commands this backend is
// for (a route, a neighbour, a call to a cloud's route API) finish in
// seconds; half a minute leaves room for a slow API and still lets the next
// resync try again within a minute.
const DefaultCommandTimeout = 30 * time.Second

// Options are the extension keys of the "Backend" object: flannel's four
// commands and weft's CommandTimeout (seconds; flannel ignores the key).
type Options struct {
	PreStartupCommand   string
	PostStartupCommand  string
	SubnetAddCommand    string
	SubnetRemoveCommand string
	CommandTimeout      time.Duration
}

// ParseOptions reads and checks the Backend object; errors name the key.
func ParseOptions(raw json.RawMessage) (Options, error) {
	var in struct {
		PreStartupCommand   *string  `json:"PreStartupCommand"`
		PostStartupCommand  *string  `json:"PostStartupCommand"`
		SubnetAddCommand    *string  `json:"SubnetAddCommand"`
		SubnetRemoveCommand *string  `json:"SubnetRemoveCommand"`
		CommandTimeout      *float64 `json:"CommandTimeout"`
	}
	o := Options{CommandTimeout: DefaultCommandTimeout}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &in); err != nil {
			return o, fmt.Errorf("extension Backend options: %w", err)
		}
	}
	for _, f := range []struct {
		key string
		in  *string
		out *string
	}{
		{"PreStartupCommand", in.PreStartupCommand, &o.PreStartupCommand},
		{"PostStartupCommand", in.PostStartupCommand, &o.PostStartupCommand},
		{"SubnetAddCommand", in.SubnetAddCommand, &o.SubnetAddCommand},
		{"SubnetRemoveCommand", in.SubnetRemoveCommand, &o.SubnetRemoveCommand},
	} {
		if f.in == nil {
			continue
		}
		if *f.in != "" && strings.TrimSpace(*f.in) == "" {
			// flannel would index the first word of nothing and crash.
			return o, fmt.Errorf(`key "Backend.%s": only white space; give a command or leave the key out`, f.key)
		}
		*f.out = *f.in
	}
	if t := in.CommandTimeout; t != nil {
		if *t < 1 || *t > 3600 {
			return o, fmt.Errorf(`key "Backend.CommandTimeout": %v is not between 1 and 3600 seconds`, *t)
		}
		o.CommandTimeout = time.Duration(*t * float64(time.Second))
	}
	return o, nil
}
