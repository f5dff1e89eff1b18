package lab

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"time"
)

// LogOffset is how far h's weftd log has been written: pass it to
// WaitLogLine to look only at what comes after.
func (h *Host) LogOffset() int64 {
	st, err := os.Stat(h.LogPath())
	if err != nil {
		return 0
	}
	return st.Size()
}

// LogTailFrom returns what h's weftd logged after offset.
func (h *Host) LogTailFrom(offset int64) string {
	data, err := os.ReadFile(h.LogPath())
	if err != nil || offset > int64(len(data)) {
		return ""
	}
	return string(data[offset:])
}

// WaitLogLine waits for a line written to h's weftd log after offset that
// contains every one of parts, and returns the line and the time weftd
// stamped on it (slog's time=, millisecond resolution).
func (h *Host) WaitLogLine(offset int64, timeout time.Duration, parts ...string) (time.Time, string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if at, line, ok := h.findLogLine(offset, parts); ok {
			return at, line, nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, "", fmt.Errorf("%s: no log line with %q within %s", h.Name, parts, timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *Host) findLogLine(offset int64, parts []string) (time.Time, string, bool) {
	f, err := os.Open(h.LogPath())
	if err != nil {
		return time.Time{}, "", false
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return time.Time{}, "", false
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue next
			}
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		return at, line, true
	}
	return time.Time{}, "", false
}

// LogField returns the value of key=value in a slog text line.
func LogField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}
