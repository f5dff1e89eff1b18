package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// figure is a number followed by a unit of time, size, rate or ratio: a
// measurement, which BENCHMARKS.md may only hold when a run printed it.
var figure = regexp.MustCompile(`\d[\d,.]*\s?(ns|µs|us|ms|s|min|h|B|KiB|MiB|GiB|kB|KB|MB|GB|bit/s|Gbit/s|Mbit/s|%|×)(\W|$)`)

// findFigure is the first figure in s, leaving alone format verbs ("%-9s",
// "%6.2f"), prefix lengths ("/24s"), identifiers ("x25519") and an SVG's
// "100%%".
func findFigure(s string) string {
	for _, m := range figure.FindAllStringSubmatchIndex(s, -1) {
		if m[0] > 0 && strings.ContainsRune("%-./_", rune(s[m[0]-1])) || m[0] > 0 && isWordByte(s[m[0]-1]) {
			continue
		}
		if s[m[2]:m[3]] == "%" && m[3] < len(s) && s[m[3]] == '%' {
			continue
		}
		return s[m[0]:m[3]]
	}
	return ""
}

func isWordByte(c byte) bool {
	return c == '_' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// TestTemplatesHoldNoFigures: no string in weftbench's source (its output
// templates among them) holds a figure with a unit; every figure in
// BENCHMARKS.md is formatted from a value the run measured. Targets live
// in docs/benchmark-targets.md, not in the program.
func TestTemplatesHoldNoFigures(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if name == "templates_test.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			checked++
			if m := findFigure(s); m != "" {
				t.Errorf("%s: a figure %q in a string of the program: %.80q", fset.Position(lit.Pos()), m, s)
			}
			return true
		})
	}
	if checked < 100 {
		t.Fatalf("only %d strings checked: the source was not read", checked)
	}
}

// TestFigurePattern: the pattern finds figures and leaves format verbs,
// names and counts alone.
func TestFigurePattern(t *testing.T) {
	for s, want := range map[string]bool{
		"within 10 s":          true,
		"peak RSS 70 MiB":      true,
		"≥ 0.95× plain":        true,
		"9.32 Gbit/s":          true,
		"every 200 ms,":        true,
		"%d MiB":               false,
		"%.1f MiB":             false,
		"%6.2f Gbit/s":         false,
		"x25519 per peer":      false,
		"issue 8":              false,
		"10.0.0.0/8":           false,
		"a /24 in 10.0.0.0/8 ": false,
		"VNI 99 on port 4789":  false,
		"1,024 slots":          false,
		"%-9s run":             false,
		"a /24s in":            false,
		`width="100%%"`:        false,
	} {
		if got := findFigure(s) != ""; got != want {
			t.Errorf("figure in %q: %v, want %v", s, got, want)
		}
	}
}
