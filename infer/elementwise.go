package infer

import "github.com/loracc/loracc/graph"

// Elementwise ops: numpy-broadcasting ones (Add, Where, comparisons, ...)
// and those whose output 0 is shaped exactly like input 0 (activations,
// normalizations, Cast, ...).

// castType is Cast's "to".
func castType(_ *Inferer, n *graph.Node, _ int) graph.DataType {
	return graph.DataType(n.AttrInt("to", 0))
}

// layerNormType: Mean and InvStdDev (outputs 1, 2) are float; Y is
// typed like the inputs.
// skipNormType is SkipSimplifiedLayerNormalization's: mean (1) and
// inv_std_var (2) in float, output (0) and input_skip_bias_sum (3) as
// the input.
func skipNormType(s *Inferer, n *graph.Node, idx int) graph.DataType {
	if idx == 1 || idx == 2 {
		return graph.Float
	}
	return firstTyped(s, n, idx)
}

func layerNormType(s *Inferer, n *graph.Node, idx int) graph.DataType {
	if idx > 0 {
		return graph.Float
	}
	return firstTyped(s, n, idx)
}

// normRank and normDims: a normalization's output 0 (and the skip
// variant's input_skip_bias_sum, 3) is shaped like its input; its
// statistics (1, 2: mean, inverse standard deviation) keep the input's
// dims before axis and have 1 from axis on, the axes normalized over.
func normRank(s *Inferer, n *graph.Node, _ int) int { return s.Rank(n.Input(0)) }

func normDims(s *Inferer, n *graph.Node, idx, rank int) []graph.Dim {
	in := s.Info(n.Input(0)).Dims
	if idx == 0 || idx == 3 || in == nil {
		return in
	}
	a := n.AttrInt("axis", -1)
	if a < 0 {
		a += int64(rank)
	}
	if a < 0 || a >= int64(rank) || len(in) != rank {
		return nil
	}
	out := append([]graph.Dim(nil), in...)
	for i := a; i < int64(rank); i++ {
		out[i] = graph.Dim{Value: 1}
	}
	return out
}

// broadcastRank is the largest input rank; unknown if any is.
func broadcastRank(s *Inferer, n *graph.Node, _ int) int {
	best := -1
	for i := range n.NumInputs() {
		ri := s.Rank(n.Input(i))
		if ri < 0 {
			return -1
		}
		best = max(best, ri)
	}
	return best
}

func broadcastShape(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	var ds [][]graph.Dim
	for _, in := range n.Inputs() {
		ds = append(ds, s.dimsOf(in))
	}
	return broadcastDims(ds, rank)
}

// sameRank: output 0 has input 0's rank; other outputs (Dropout's mask,
// LayerNormalization's statistics) are not derived.
func sameRank(s *Inferer, n *graph.Node, idx int) int {
	if idx != 0 {
		return -1
	}
	return s.Rank(n.Input(0))
}

func sameDims(s *Inferer, n *graph.Node, _ int) []graph.Dim { return s.Info(n.Input(0)).Dims }

// broadcast and sameShape are the entries most elementwise ops have.
func broadcast() opInfer { return opInfer{rank: broadcastRank, dims: broadcastShape} }

func sameShape() opInfer { return opInfer{rank: sameRank, dims: sameDims} }
