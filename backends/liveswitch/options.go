package liveswitch

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"

	"github.com/weftnet/weft/backends"
)

// A change of the running backend's options is taken up live like a
// switch: the backend is rebuilt in place with the new options (a switch
// of Type keeps the old one beside it instead). Which options cost a gap
// is a fact of each backend's Kind (backends.Kind.GapOptions).

// ChangedOptions lists the keys of two Backend objects whose values differ
// (keys compared as encoding/json matches them, without regard to case),
// Type left out.
func ChangedOptions(old, cur json.RawMessage) []string {
	var a, b map[string]json.RawMessage
	if json.Unmarshal(old, &a) != nil || json.Unmarshal(cur, &b) != nil {
		return nil
	}
	lower := func(m map[string]json.RawMessage) map[string]string {
		out := make(map[string]string, len(m))
		for k, v := range m {
			out[strings.ToLower(k)] = CompactJSON(v)
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

// LogOptionGaps warns once per changed option of backend typ whose live
// change cuts pairs for a moment, saying what it costs.
func LogOptionGaps(typ string, changed []string, log *slog.Logger) {
	kind, _ := backends.Lookup(typ)
	for _, k := range changed {
		if gap, ok := kind.GapOptions[k]; ok {
			log.Warn("a Backend option changed whose live change is not gapless", "option", k, "gap", gap)
		}
	}
}
