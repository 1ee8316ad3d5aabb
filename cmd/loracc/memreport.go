package main

import (
	"fmt"
	"io"
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
	byOp := map[string]int64{}
	count := map[string]int{}
	for _, h := range r.Holders {
		byOp[h.Op] += h.Bytes
		count[h.Op]++
	}
	ops := make([]string, 0, len(byOp))
	for op := range byOp {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool {
		return byOp[ops[i]] > byOp[ops[j]] || (byOp[ops[i]] == byOp[ops[j]] && ops[i] < ops[j])
	})
	fmt.Fprintf(w, "by op at the peak:")
	for i, op := range ops {
		if i == 10 {
			break
		}
		fmt.Fprintf(w, " %s %s (%d)", op, mib(byOp[op]), count[op])
	}
	fmt.Fprintln(w)
	return nil
}
