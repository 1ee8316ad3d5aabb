package infer

import (
	"math"

	"github.com/loracc/loracc/graph"
)

// Indexing: Slice (of data and of shape vectors), Gather, GatherND,
// GatherElements and the scatters.

// sliceDims are the dims of a Slice with constant bounds: a known size is
// cut as ONNX clamps it; an unknown one keeps its symbol when the slice
// takes it whole.
func sliceDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	if len(x) != rank {
		return nil
	}
	sa, err := graph.ReadSlice(n, rank)
	if err != nil {
		return nil
	}
	starts, ends := sa.Starts, sa.Ends
	out := append([]graph.Dim{}, x...)
	for k := range starts {
		a, step := sa.Axes[k], sa.Steps[k]
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

// vectorSlice reads the bounds of a Slice that cuts a 1-D vector: one
// start and end, along axis 0 (or −1).
func vectorSlice(n *graph.Node) (graph.SliceArgs, bool) {
	sa, err := graph.ReadSlice(n, 1)
	return sa, err == nil && len(sa.Starts) == 1
}

// sliceValue cuts a shape vector's entries, step 1 only.
func sliceValue(s *Inferer, n *graph.Node) []graph.Dim {
	x := s.shapeValue(n.Input(0))
	if x == nil {
		return nil
	}
	sa, ok := vectorSlice(n)
	if !ok || sa.Steps[0] != 1 {
		return nil
	}
	l := int64(len(x))
	a, b := sa.Starts[0], sa.Ends[0]
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
	if n.Attr("starts") != nil {
		return -1 // lengths are read from the input bounds of Slice-10 and later only
	}
	sa, ok := vectorSlice(n)
	if !ok {
		return -1
	}
	return SliceLen(l, sa.Starts[0], sa.Ends[0], sa.Steps[0])
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

// gbqDims (com.microsoft GatherBlockQuantized): Gather's along
// gather_axis, the last dim times the codes per byte when the table is
// packed uint8 (the kernel takes uint8 data quantized along its last
// axis only).
func gbqDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x, idx := s.dimsOf(n.Input(0)), s.dimsOf(n.Input(1))
	a, err := graph.NormAxis(n.AttrInt("gather_axis", 0), len(x))
	if x == nil || idx == nil || err != nil {
		return nil
	}
	out := append(append(append([]graph.Dim{}, x[:a]...), idx...), x[a+1:]...)
	if len(out) != rank || rank == 0 {
		return nil
	}
	if bits := n.AttrInt("bits", 4); s.DType(n.Input(0)) == graph.Uint8 && bits > 0 && bits < 8 {
		if l := out[rank-1]; l.Known() {
			out[rank-1] = graph.Dim{Value: l.Value * (8 / bits)}
		} else {
			out[rank-1] = graph.Dim{Value: -1}
		}
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
