package infer

import "github.com/loracc/loracc/graph"

// MatMul (numpy semantics: 1-D operands promoted and dropped, batch dims
// broadcast) and Gemm.

func matMulRank(s *Inferer, n *graph.Node, _ int) int {
	a, b := s.Rank(n.Input(0)), s.Rank(n.Input(1))
	if a < 0 || b < 0 {
		return -1
	}
	if a == 1 && b == 1 {
		return 0
	}
	if a == 1 || b == 1 {
		return max(a, b) - 1
	}
	return max(a, b)
}

func matMulDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	a, b := s.dimsOf(n.Input(0)), s.dimsOf(n.Input(1))
	switch {
	case a == nil || b == nil:
		return nil
	case len(a) >= 2 && len(b) >= 2:
		batch := broadcastDims([][]graph.Dim{a[:len(a)-2], b[:len(b)-2]}, rank-2)
		if batch == nil {
			return nil
		}
		return append(batch, a[len(a)-2], b[len(b)-1])
	case len(a) == 1 && len(b) >= 2:
		return append(append([]graph.Dim{}, b[:len(b)-2]...), b[len(b)-1])
	case len(b) == 1 && len(a) >= 2:
		return append([]graph.Dim{}, a[:len(a)-1]...)
	}
	return nil
}

// rank2 is Gemm's and Flatten's rank.
func rank2(*Inferer, *graph.Node, int) int { return 2 }

func gemmDims(s *Inferer, n *graph.Node, _ int) []graph.Dim {
	a, b := s.dimsOf(n.Input(0)), s.dimsOf(n.Input(1))
	if len(a) != 2 || len(b) != 2 {
		return nil
	}
	return []graph.Dim{a[n.AttrInt("transA", 0)&1], b[1-n.AttrInt("transB", 0)&1]}
}
