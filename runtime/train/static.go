package train

// Static shapes: each step runs on a graph compiled for its exact shapes.
// The batch is always BatchSize·GradAccum rows (an epoch's short last
// batch is dropped, as Hugging Face's dataloader_drop_last does, so every
// step's shape is one of the buckets), and an lm batch's sequence length
// is padded up to its bucket. Padding never changes the loss: ids are
// padded with PadID, labels with the ignore index. One graph per bucket,
// compiled on first use by the caller (Static.Graph) and opened once.

import (
	"fmt"

	"github.com/loracc/loracc/trainio"
)

// Static configures static-shape steps.
type Static struct {
	// Bucket gives the sequence length a batch whose longest example has
	// n tokens is padded to (n itself for non-sequence data, where it is
	// 0), or an error when n is over the longest bucket.
	Bucket func(n int) (int, error)
	// Graph compiles (or finds) the step graph for a bucket and returns
	// its path and IO.
	Graph func(seqLen int) (string, trainio.Graph, error)
}

// openFunc opens the compiled graph at path into g (an ORT session, a
// bound one, or a fake in tests).
type openFunc func(g *stepGraph, path string) error

// staticStep picks, compiling and opening it on first use, the graph for
// the bucket of the examples idx.
func (r *runner) staticStep(idx []int) (*stepGraph, int, error) {
	longest := 0
	for _, i := range idx {
		longest = max(longest, r.cfg.Data.SeqLen(i))
	}
	seqLen, err := r.cfg.Static.Bucket(longest)
	if err != nil {
		return nil, 0, err
	}
	if g := r.buckets[seqLen]; g != nil {
		return g, seqLen, nil
	}
	path, io, err := r.cfg.Static.Graph(seqLen)
	if err != nil {
		return nil, 0, fmt.Errorf("compiling the step for sequence length %d: %w", seqLen, err)
	}
	g := &stepGraph{io: io, k: 1}
	if err := r.open(g, path); err != nil {
		return nil, 0, err
	}
	if r.buckets == nil {
		r.buckets = map[int]*stepGraph{}
	}
	r.buckets[seqLen] = g
	return g, seqLen, nil
}
