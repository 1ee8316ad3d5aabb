// Command memplot draws the memory issue's memory-vs-batch and
// memory-vs-sequence-length charts (docs/gpu-benchmarks.md) from the
// points `bench/gpu/run.sh memcurve` records, one JSON object a line:
//
//	{"model": "gpt2", "side": "loracc", "batch": 4, "seq": 512, "alloc_gib": 3.1, "device_gib": 4.2}
//
// side is loracc (alloc_gib: the arena's peak in use, MaxInUse) or pytorch
// (max_memory_allocated); device_gib is the device's used memory at the
// peak, read the same way for both. For each model it writes
// DIR/memory_vs_batch_MODEL.png (the points at -seq) and
// DIR/memory_vs_seq_MODEL.png (the points at -batch).
//
//	memplot -o docs/img bench/gpu/results/.../memcurve.jsonl
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/loracc/loracc/internal/plot"
)

type point struct {
	Model     string  `json:"model"`
	Side      string  `json:"side"`
	Batch     int     `json:"batch"`
	Seq       int     `json:"seq"`
	AllocGiB  float64 `json:"alloc_gib"`
	DeviceGiB float64 `json:"device_gib"`
}

func main() {
	out := flag.String("o", ".", "folder for the PNGs")
	seq := flag.Int("seq", 512, "sequence length of the memory-vs-batch points")
	batch := flag.Int("batch", 4, "batch of the memory-vs-sequence points")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: memplot [-o DIR] [-seq 512] [-batch 4] memcurve.jsonl...")
		os.Exit(2)
	}
	var pts []point
	for _, path := range flag.Args() {
		p, err := read(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "memplot:", err)
			os.Exit(1)
		}
		pts = append(pts, p...)
	}
	if err := draw(*out, pts, *seq, *batch); err != nil {
		fmt.Fprintln(os.Stderr, "memplot:", err)
		os.Exit(1)
	}
}

func read(path string) ([]point, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pts []point
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var p point
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if p.Model == "" || (p.Side != "loracc" && p.Side != "pytorch") || p.Batch <= 0 || p.Seq <= 0 {
			return nil, fmt.Errorf("%s:%d: want model, side (loracc or pytorch), batch and seq", path, line)
		}
		pts = append(pts, p)
	}
	return pts, sc.Err()
}

// draw writes the two charts of every model in pts.
func draw(dir string, pts []point, seq, batch int) error {
	models := map[string]bool{}
	for _, p := range pts {
		models[p.Model] = true
	}
	names := make([]string, 0, len(models))
	for m := range models {
		names = append(names, m)
	}
	sort.Strings(names)
	for _, m := range names {
		for _, c := range []struct {
			file, title, x string
			keep           func(point) bool
			at             func(point) float64
		}{
			{"memory_vs_batch_" + m + ".png", fmt.Sprintf("%s: peak memory against batch (sequence %d)", m, seq), "batch",
				func(p point) bool { return p.Seq == seq }, func(p point) float64 { return float64(p.Batch) }},
			{"memory_vs_seq_" + m + ".png", fmt.Sprintf("%s: peak memory against sequence length (batch %d)", m, batch), "sequence length",
				func(p point) bool { return p.Batch == batch }, func(p point) float64 { return float64(p.Seq) }},
		} {
			var series []plot.Series
			for _, s := range []struct {
				name, side string
				device     bool
			}{
				{"loracc: arena peak in use", "loracc", false},
				{"PyTorch: max_memory_allocated", "pytorch", false},
				{"loracc: device used", "loracc", true},
				{"PyTorch: device used", "pytorch", true},
			} {
				var sel []point
				for _, p := range pts {
					if p.Model == m && p.Side == s.side && c.keep(p) {
						sel = append(sel, p)
					}
				}
				sort.Slice(sel, func(i, j int) bool { return c.at(sel[i]) < c.at(sel[j]) })
				ser := plot.Series{Name: s.name}
				for _, p := range sel {
					y := p.AllocGiB
					if s.device {
						y = p.DeviceGiB
					}
					ser.X, ser.Y = append(ser.X, c.at(p)), append(ser.Y, y)
				}
				if len(ser.X) > 0 {
					series = append(series, ser)
				}
			}
			if len(series) == 0 {
				continue
			}
			if err := plot.LinePNG(filepath.Join(dir, c.file), series, plot.Axes{Title: c.title, X: c.x, Y: "GiB"}); err != nil {
				return err
			}
		}
	}
	return nil
}
