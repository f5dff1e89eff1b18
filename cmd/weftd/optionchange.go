package main

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
)

// A change of the running backend's options is taken up live like a
// switch: the backend is rebuilt in place with the new options (a switch
// of Type keeps the old one beside it instead). Most options are taken up
// without a gap (an MTU, a keepalive, the on-demand settings). The ones
// below must be the same on both ends of a pair: from the moment one host
// takes the change until the other has, that pair cannot talk. weftd says
// so when it sees one, as the README does.
var optionGaps = map[string]string{
	"psk":          "a pair drops its packets until both hosts have the new PSK (each host takes it at its next config check); change it in a quiet moment",
	"listenport":   "peers send to the old port until they read this host's lease again",
	"listenportv6": "peers send to the old port until they read this host's lease again",
	"vni":          "a pair is cut until both hosts have the new VNI",
	"port":         "a pair is cut until both hosts have the new port",
	"mode":         "the WireGuard devices are rebuilt: pairs are cut until both hosts have the new Mode",
}

// changedOptions lists the keys of two Backend objects whose values differ
// (keys compared as encoding/json matches them, without regard to case),
// Type left out.
func changedOptions(old, cur json.RawMessage) []string {
	var a, b map[string]json.RawMessage
	if json.Unmarshal(old, &a) != nil || json.Unmarshal(cur, &b) != nil {
		return nil
	}
	lower := func(m map[string]json.RawMessage) map[string]string {
		out := make(map[string]string, len(m))
		for k, v := range m {
			out[strings.ToLower(k)] = compactJSON(v)
		}
		return out
	}
	la, lb := lower(a), lower(b)
	var changed []string
	for k, v := range la {
		if w, ok := lb[k]; !ok || w != v {
			changed = append(changed, k)
		}
	}
	for k := range lb {
		if _, ok := la[k]; !ok {
			changed = append(changed, k)
		}
	}
	changed = slices.DeleteFunc(changed, func(k string) bool { return k == "type" })
	slices.Sort(changed)
	return changed
}

// logOptionGaps warns once per changed option whose live change cuts
// pairs for a moment (optionGaps).
func logOptionGaps(changed []string, log *slog.Logger) {
	for _, k := range changed {
		if gap, ok := optionGaps[k]; ok {
			log.Warn("a Backend option changed whose live change is not gapless", "option", k, "gap", gap)
		}
	}
}
