package infer

import (
	"math"

	"github.com/loracc/loracc/graph"
)

// Indexing: Slice (of data and of shape vectors), Gather, GatherND,
// GatherElements and the scatters.

// sliceArgs are Slice's constant bounds: attributes before opset 10,
// inputs after (sliceInputs); ok is false when one is computed.
func sliceArgs(n *graph.Node) (starts, ends, axes, steps []int64, ok bool) {
	if n.Attr("starts") != nil {
		return n.AttrInts("starts"), n.AttrInts("ends"), n.AttrInts("axes"), nil, true
	}
	return sliceInputs(n)
}

func sliceInputs(n *graph.Node) (starts, ends, axes, steps []int64, ok bool) {
	if starts, ok = graph.ConstInts(n.Input(1)); !ok {
		return
	}
	if ends, ok = graph.ConstInts(n.Input(2)); !ok {
		return
	}
	if v := n.Input(3); v != nil {
		if axes, ok = graph.ConstInts(v); !ok {
			return
		}
	}
	if v := n.Input(4); v != nil {
		if steps, ok = graph.ConstInts(v); !ok {
			return
		}
	}
	return starts, ends, axes, steps, true
}

// sliceDims are the dims of a Slice with constant bounds: a known size is
// cut as ONNX clamps it; an unknown one keeps its symbol when the slice
// takes it whole.
func sliceDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	if len(x) != rank {
		return nil
	}
	starts, ends, axes, steps, ok := sliceArgs(n)
	if !ok {
		return nil
	}
	if len(ends) != len(starts) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
		return nil
	}
	out := append([]graph.Dim{}, x...)
	for k := range starts {
		a := int64(k)
		if axes != nil {
			a = axes[k]
		}
		a, err := graph.NormAxis(a, rank)
		if err != nil {
			return nil
		}
		step := int64(1)
		if steps != nil {
			step = steps[k]
		}
		switch {
		case x[a].Known():
			l := SliceLen(int(x[a].Value), starts[k], ends[k], step)
			if l < 0 {
				return nil
			}
			out[a] = graph.Dim{Value: int64(l)}
		case step == 1 && starts[k] == 0 && ends[k] >= math.MaxInt32:
			// the whole axis: the size and its symbol stay
		default:
			out[a] = graph.Dim{Value: -1}
		}
	}
	return out
}

// vectorSlice reports whether a Slice's bounds cut a 1-D vector: one
// start and end, along axis 0 (or −1).
func vectorSlice(starts, ends, axes []int64) bool {
	return len(starts) == 1 && len(ends) == 1 && (axes == nil || len(axes) == 1 && (axes[0] == 0 || axes[0] == -1))
}

// sliceValue cuts a shape vector's entries, step 1 only.
func sliceValue(s *Inferer, n *graph.Node) []graph.Dim {
	x := s.shapeValue(n.Input(0))
	if x == nil {
		return nil
	}
	st, en, axes, steps, ok := sliceArgs(n)
	if !ok {
		return nil
	}
	step := int64(1)
	if steps != nil {
		if len(steps) != 1 {
			return nil
		}
		step = steps[0]
	}
	if !vectorSlice(st, en, axes) || step != 1 {
		return nil
	}
	l := int64(len(x))
	a, b := st[0], en[0]
	if a < 0 {
		a += l
	}
	if b < 0 {
		b += l
	}
	a, b = min(max(a, 0), l), min(max(b, 0), l)
	if b <= a {
		return []graph.Dim{}
	}
	return append([]graph.Dim{}, x[a:b]...)
}

// sliceLength is the length of a slice of a shape vector (opset 10+
// inputs, any step).
func sliceLength(s *Inferer, n *graph.Node) int {
	l := s.Length1D(n.Input(0))
	if l < 0 {
		return -1
	}
	st, en, axes, steps, ok := sliceInputs(n)
	if !ok || !vectorSlice(st, en, axes) {
		return -1
	}
	step := int64(1)
	if steps != nil {
		if len(steps) != 1 {
			return -1
		}
		step = steps[0]
	}
	return SliceLen(l, st[0], en[0], step)
}

func gatherRank(s *Inferer, n *graph.Node, _ int) int {
	a, b := s.Rank(n.Input(0)), s.Rank(n.Input(1))
	if a < 0 || b < 0 {
		return -1
	}
	return a - 1 + b
}

// gatherDims: x's dims with the axis replaced by the indices' dims.
func gatherDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x, idx := s.dimsOf(n.Input(0)), s.dimsOf(n.Input(1))
	if x == nil || idx == nil {
		return nil
	}
	a, err := graph.NormAxis(n.AttrInt("axis", 0), len(x))
	if err != nil {
		return nil
	}
	out := append(append(append([]graph.Dim{}, x[:a]...), idx...), x[a+1:]...)
	if len(out) != rank {
		return nil
	}
	return out
}

// gatherValue picks entries of a shape vector at constant indices.
func gatherValue(s *Inferer, n *graph.Node) []graph.Dim {
	x := s.shapeValue(n.Input(0))
	idx, ok := graph.ConstInts(n.Input(1))
	if x == nil || !ok || n.AttrInt("axis", 0) != 0 {
		return nil
	}
	out := make([]graph.Dim, len(idx))
	for i, k := range idx {
		if k < 0 {
			k += int64(len(x))
		}
		if k < 0 || k >= int64(len(x)) {
			return nil
		}
		out[i] = x[k]
	}
	return out
}

// gatherLength: entries of a 1-D vector picked with a 1-D index.
func gatherLength(s *Inferer, n *graph.Node) int {
	if idx := s.Info(n.Input(1)); idx.Rank == 1 && idx.Dims != nil && idx.Dims[0].Known() && s.Rank(n.Input(0)) == 1 {
		return int(idx.Dims[0].Value)
	}
	return -1
}

// gatherElementsDims are the indices' dims: GatherElements picks one
// element per index. The lm and ce losses pick each label's
// log-probability so; with these dims their masked Mul needs no run-time
// un-broadcasting.
func gatherElementsDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	if d := s.dimsOf(n.Input(1)); len(d) == rank {
		return d
	}
	return nil
}

// gatherNDRank is data rank + indices rank − indices.shape[-1] − 1 −
// batch_dims.
func gatherNDRank(s *Inferer, n *graph.Node, _ int) int {
	a, b := s.Rank(n.Input(0)), s.Info(n.Input(1))
	if a < 0 || b.Dims == nil || len(b.Dims) == 0 || !b.Dims[len(b.Dims)-1].Known() {
		return -1
	}
	return a + len(b.Dims) - int(b.Dims[len(b.Dims)-1].Value) - 1 - int(n.AttrInt("batch_dims", 0))
}
