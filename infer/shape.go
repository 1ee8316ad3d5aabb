package infer

import "github.com/loracc/loracc/graph"

// Shape arithmetic and the ops that make tensors from shapes: Shape,
// Size, Reshape, Expand, ConstantOfShape, Range, Constant, Flatten, and
// the value rules that let a shape vector's entries pass through Cast and
// Identity. Reshape reads its target's entries (shapeValue), so
// torch.onnx's Concat(Shape slices, −1, 16) targets keep the symbols.

// shapeLength is the length of Shape's output: x's rank cut by start and
// end.
func shapeLength(s *Inferer, n *graph.Node) int {
	r := s.Rank(n.Input(0))
	if r < 0 {
		return -1
	}
	start, end := clampIndex(n.AttrInt("start", 0), r), clampIndex(n.AttrInt("end", int64(r)), r)
	return max(0, end-start)
}

func shapeDims(s *Inferer, n *graph.Node, _ int) []graph.Dim {
	if l := shapeLength(s, n); l >= 0 {
		return []graph.Dim{{Value: int64(l)}}
	}
	return nil
}

// shapeEntries are x's dims between start and end; nil when one of them
// is unknown and unnamed (it would read as −1).
func shapeEntries(s *Inferer, n *graph.Node) []graph.Dim {
	x := s.Info(n.Input(0)).Dims
	if x == nil {
		return nil
	}
	r := len(x)
	start, end := clampIndex(n.AttrInt("start", 0), r), clampIndex(n.AttrInt("end", int64(r)), r)
	if end <= start {
		return []graph.Dim{}
	}
	out := append([]graph.Dim{}, x[start:end]...)
	for _, d := range out {
		if !d.Known() && d.Param == "" {
			return nil
		}
	}
	return out
}

// rankOne and rankZero are the ranks of Shape and Range, and of Size.
func rankOne(*Inferer, *graph.Node, int) int  { return 1 }
func rankZero(*Inferer, *graph.Node, int) int { return 0 }

// castValue: casting a shape vector to another integer type keeps its
// entries.
func castValue(s *Inferer, n *graph.Node) []graph.Dim {
	if dt := graph.DataType(n.AttrInt("to", 0)); dt == graph.Int64 || dt == graph.Int32 {
		return s.shapeValue(n.Input(0))
	}
	return nil
}

// passValue and passLength: the output's entries and length are input
// 0's (Identity, and Cast's length).
func passValue(s *Inferer, n *graph.Node) []graph.Dim { return s.shapeValue(n.Input(0)) }
func passLength(s *Inferer, n *graph.Node) int        { return s.Length1D(n.Input(0)) }

// shapeInputRank is the rank of ops whose input i is the output shape
// (Reshape's 1, ConstantOfShape's 0): that vector's length.
func shapeInputRank(i int) func(s *Inferer, n *graph.Node, idx int) int {
	return func(s *Inferer, n *graph.Node, _ int) int { return s.Length1D(n.Input(i)) }
}

func expandRank(s *Inferer, n *graph.Node, _ int) int {
	a, l := s.Rank(n.Input(0)), s.Length1D(n.Input(1))
	if a < 0 || l < 0 {
		return -1
	}
	return max(a, l)
}

// expandDims broadcast x's dims with the shape input's value (Expand is
// bidirectional, as numpy's broadcasting): repeat_kv's Expand of
// [B, KV, 1, T, D] by [1, 1, G, 1, 1] is [B, KV, G, T, D].
func expandDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x, target := s.dimsOf(n.Input(0)), s.shapeValue(n.Input(1))
	if x == nil || target == nil {
		return nil
	}
	return broadcastDims([][]graph.Dim{x, target}, rank)
}

// tensorAttrType is the type of the tensor in attribute "value" (Constant,
// ConstantOfShape), float when there is none.
func tensorAttrType(n *graph.Node) (graph.DataType, bool) {
	if a := n.Attr("value"); a != nil && a.T != nil {
		return a.T.DType, true
	}
	return graph.Float, false
}

func constantOfShapeType(_ *Inferer, n *graph.Node, _ int) graph.DataType {
	dt, _ := tensorAttrType(n)
	return dt
}

// constantType and constantRank cover the Constant forms graph.ConstTensor
// does not read: value_int(s), value_float(s), a Constant of another
// domain.
func constantType(_ *Inferer, n *graph.Node, _ int) graph.DataType {
	if dt, ok := tensorAttrType(n); ok {
		return dt
	}
	if n.Attr("value_int") != nil || n.Attr("value_ints") != nil {
		return graph.Int64
	}
	return graph.Float
}

func constantRank(_ *Inferer, n *graph.Node, _ int) int {
	if a := n.Attr("value"); a != nil && a.T != nil {
		return len(a.T.Dims)
	}
	if n.Attr("value_ints") != nil || n.Attr("value_floats") != nil {
		return 1
	}
	return 0
}

// reshapeDims reads Reshape's target from the shape arithmetic that
// built it (see shapeValue): 0 copies x's dim (unless allowzero), −1 is
// what is left of x's size once the other dims are divided out — a known
// number, or one symbol of x's that the others do not account for.
func reshapeDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	target := s.shapeValue(n.Input(1))
	if len(target) != rank {
		return nil
	}
	out := make([]graph.Dim, rank)
	infer := -1
	for i, e := range target {
		switch {
		case e.Param != "":
			out[i] = e
		case e.Value == 0 && n.AttrInt("allowzero", 0) == 0:
			if i >= len(x) {
				return nil
			}
			out[i] = x[i]
		case e.Value == -1 && e.Param == "" && infer < 0:
			infer = i
		case e.Value >= 0:
			out[i] = graph.Dim{Value: e.Value}
		default:
			out[i] = graph.Dim{Value: -1}
		}
	}
	if infer < 0 {
		return out
	}
	out[infer] = graph.Dim{Value: -1}
	if x == nil {
		return out
	}
	if d, ok := leftOver(x, out, infer); ok {
		out[infer] = d
	}
	return out
}

// leftOver divides x's dims by out's other than skip: matching symbols
// cancel, known sizes multiply up; what is left is a known size or one
// symbol, ok false when it is neither.
func leftOver(x, out []graph.Dim, skip int) (graph.Dim, bool) {
	left := append([]graph.Dim{}, x...)
	known := int64(1)
	for i, d := range out {
		if i == skip {
			continue
		}
		switch {
		case d.Known():
			known *= d.Value
		case d.Param != "":
			found := false
			for j, l := range left {
				if l.Param == d.Param {
					left = append(left[:j], left[j+1:]...)
					found = true
					break
				}
			}
			if !found {
				return graph.Dim{}, false
			}
		default:
			return graph.Dim{}, false
		}
	}
	have := int64(1)
	var syms []graph.Dim
	for _, l := range left {
		if l.Known() {
			have *= l.Value
		} else {
			syms = append(syms, l)
		}
	}
	switch {
	case len(syms) == 0 && known > 0 && have%known == 0:
		return graph.Dim{Value: have / known}, true
	case len(syms) == 1 && syms[0].Param != "" && have == known:
		return syms[0], true
	}
	return graph.Dim{}, false
}
