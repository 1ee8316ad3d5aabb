package infer

import "github.com/loracc/loracc/graph"

// Reductions (ReduceSum, ReduceMean, ...): axes from the attribute or a
// constant input, keepdims, and opset 18's noop_with_empty_axes.

func reduceRank(s *Inferer, n *graph.Node, _ int) int {
	x := s.Rank(n.Input(0))
	if x < 0 {
		return -1
	}
	if n.AttrInt("keepdims", 1) != 0 {
		return x
	}
	axes, ok := s.Axes(n)
	if !ok {
		return -1
	}
	if len(axes) == 0 {
		return 0
	}
	return x - len(axes)
}

func reduceDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	axes, ok := s.Axes(n)
	if x == nil || !ok {
		return nil
	}
	if len(axes) == 0 && n.AttrInt("noop_with_empty_axes", 0) != 0 {
		return x
	}
	reduced := make([]bool, len(x))
	for i := range reduced {
		reduced[i] = len(axes) == 0
	}
	for _, a := range axes {
		a, err := graph.NormAxis(a, len(x))
		if err != nil {
			return nil
		}
		reduced[a] = true
	}
	keep := n.AttrInt("keepdims", 1) != 0
	var out []graph.Dim
	for i, d := range x {
		switch {
		case !reduced[i]:
			out = append(out, d)
		case keep:
			out = append(out, graph.Dim{Value: 1})
		}
	}
	if len(out) != rank {
		return nil
	}
	return out
}
