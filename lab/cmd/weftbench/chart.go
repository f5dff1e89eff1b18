package main

import (
	"fmt"
	"html"
	"strings"
)

// renderChart draws the data-path medians as horizontal bars, an SVG: per
// backend and stream count, its limit (grey) over weft's path (blue), with
// weft's ratio to the limit. udp's limit is the bare veth.
func renderChart(backends []string, all [][]*path) string {
	type bar struct {
		label string
		gbps  float64
		weft  bool
		note  string
	}
	var bars []bar
	maxGbps := 0.0
	for i, backend := range backends {
		paths := all[i]
		var weft, limit *path
		for _, p := range paths {
			if p.limitOf != "" {
				weft = p
			}
		}
		if weft == nil {
			continue
		}
		for _, p := range paths {
			if p.name == weft.limitOf {
				limit = p
			}
		}
		if limit == nil {
			limit = paths[0] // the bare veth
		}
		for _, streams := range []int{1, 4} {
			l, w := median(limit.runs[streams]).Gbps, median(weft.runs[streams]).Gbps
			bars = append(bars,
				bar{label: fmt.Sprintf("%s, %d stream(s): %s", backend, streams, limit.name), gbps: l},
				bar{label: fmt.Sprintf("%s, %d stream(s): weft", backend, streams), gbps: w, weft: true, note: fmt.Sprintf("%.2f×", w/l)})
			maxGbps = max(maxGbps, l, w)
		}
	}
	const (
		width, labelW, barH, gap, top = 960, 380, 16, 4, 40
		plotW                         = width - labelW - 110
	)
	height := top + len(bars)*(barH+gap) + len(bars)/2*6 + 20
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">weft data paths, TCP Gbit/s (median), each next to its limit</text>`+"\n")
	y := top
	for i, br := range bars {
		w := 0
		if maxGbps > 0 {
			w = int(br.gbps / maxGbps * plotW)
		}
		color := "#9e9e9e"
		if br.weft {
			color = "#1f6fb2"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`, labelW-6, y+barH-4, html.EscapeString(br.label))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`, labelW, y, w, barH, color)
		value := fmt.Sprintf("%.2f", br.gbps)
		if br.note != "" {
			value += " (" + br.note + ")"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", labelW+w+4, y+barH-4, value)
		y += barH + gap
		if i%2 == 1 {
			y += 6
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
