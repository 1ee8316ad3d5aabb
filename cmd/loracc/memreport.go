package main

import (
	"fmt"
	"io"
	"regexp"
	"sort"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/memplan"
)

// memoryReport prints memplan's plan of a compiled step: the peak of live
// activation bytes, the largest values live then and their sum by op.
func memoryReport(w io.Writer, path, dims string) error {
	m, err := graph.Load(path)
	if err != nil {
		return err
	}
	r, err := memplan.Plan(m.Graph)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	mib := func(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
	fmt.Fprintf(w, "memory plan of %s (%s): activations peak %s (at node %q); weights %s, inputs %s, outputs %s\n",
		path, dims, mib(r.Peak), r.PeakAt, mib(r.Weights), mib(r.Inputs), mib(r.Outputs))
	if r.Unknown > 0 {
		fmt.Fprintf(w, "  %d activations of unknown size left out\n", r.Unknown)
	}
	fmt.Fprintf(w, "largest holders at the peak:\n")
	for i, h := range r.Holders {
		if i == 12 {
			fmt.Fprintf(w, "  ... %d more\n", len(r.Holders)-i)
			break
		}
		fmt.Fprintf(w, "  %10s  %v  %s (%s)\n", mib(h.Bytes), h.Dims, h.Name, h.Op)
	}
	// The same value in every layer is one line: the layer numbers of the
	// names folded to N (model.layers.N.mlp.up_proj.out × 16).
	fold := regexp.MustCompile(`([./])[0-9]+([./])`)
	byName, names := tally(r.Holders, func(h memplan.Holder) string { return fold.ReplaceAllString(h.Name, "${1}N$2") + " (" + h.Op + ")" })
	fmt.Fprintf(w, "at the peak, layers folded:\n")
	for i, k := range names {
		if i == 12 {
			fmt.Fprintf(w, "  ... %d more\n", len(names)-i)
			break
		}
		fmt.Fprintf(w, "  %10s  %3d×  %s\n", mib(byName[k].bytes), byName[k].n, k)
	}
	byOp, ops := tally(r.Holders, func(h memplan.Holder) string { return h.Op })
	fmt.Fprintf(w, "by op at the peak:")
	for i, op := range ops {
		if i == 10 {
			break
		}
		fmt.Fprintf(w, " %s %s (%d)", op, mib(byOp[op].bytes), byOp[op].n)
	}
	fmt.Fprintln(w)
	return nil
}

// group is the bytes and number of the holders of one key.
type group struct {
	bytes int64
	n     int
}

// tally groups holders by key, largest total first (ties by key).
func tally(hs []memplan.Holder, key func(memplan.Holder) string) (map[string]group, []string) {
	by := map[string]group{}
	for _, h := range hs {
		g := by[key(h)]
		g.bytes += h.Bytes
		g.n++
		by[key(h)] = g
	}
	keys := make([]string, 0, len(by))
	for k := range by {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return by[keys[i]].bytes > by[keys[j]].bytes || (by[keys[i]].bytes == by[keys[j]].bytes && keys[i] < keys[j])
	})
	return by, keys
}
