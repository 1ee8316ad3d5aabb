package infer

import "github.com/loracc/loracc/graph"

// Data movement that keeps or rearranges dims: Unsqueeze adds 1s,
// Squeeze drops them, Concat adds up its axis, Transpose permutes; Split,
// Pad and Tile keep the rank only. GatherND's rank, for one, needs the
// last dim of indices built as Concat(Unsqueeze(i, −1), Unsqueeze(j, −1),
// axis=−1).

func unsqueezeRank(s *Inferer, n *graph.Node, _ int) int {
	x := s.Rank(n.Input(0))
	axes, ok := s.Axes(n)
	if x < 0 || !ok {
		return -1
	}
	return x + len(axes)
}

func unsqueezeDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	axes, ok := s.Axes(n)
	if x == nil || !ok || len(x)+len(axes) != rank {
		return nil
	}
	one := make([]bool, rank)
	for _, a := range axes {
		if a < 0 {
			a += int64(rank)
		}
		if a < 0 || a >= int64(rank) || one[a] {
			return nil // out of range or repeated: an invalid node
		}
		one[a] = true
	}
	out := make([]graph.Dim, 0, rank)
	k := 0
	for i := range rank {
		if one[i] {
			out = append(out, graph.Dim{Value: 1})
		} else {
			out = append(out, x[k])
			k++
		}
	}
	return out
}

// unsqueezeLength: a scalar unsqueezed is a one-entry vector.
func unsqueezeLength(s *Inferer, n *graph.Node) int {
	if s.Rank(n.Input(0)) == 0 {
		return 1
	}
	return -1
}

// oneEntryValue: Squeeze and Unsqueeze between a scalar and a
// one-element vector keep the entry.
func oneEntryValue(s *Inferer, n *graph.Node) []graph.Dim {
	if in := s.shapeValue(n.Input(0)); len(in) == 1 {
		return in
	}
	return nil
}

func squeezeRank(s *Inferer, n *graph.Node, _ int) int {
	x := s.Rank(n.Input(0))
	axes, ok := s.Axes(n)
	if x < 0 || !ok {
		return -1
	}
	if len(axes) > 0 {
		return x - len(axes)
	}
	// Squeeze without axes drops every size-1 dim: count them.
	dims := s.Info(n.Input(0)).Dims
	if dims == nil {
		return -1
	}
	kept := 0
	for _, d := range dims {
		if !d.Known() {
			return -1
		}
		if d.Value != 1 {
			kept++
		}
	}
	return kept
}

func squeezeDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	axes, ok := s.Axes(n)
	if x == nil || !ok {
		return nil
	}
	drop := make([]bool, len(x))
	for _, a := range axes {
		a, err := graph.NormAxis(a, len(x))
		if err != nil {
			return nil
		}
		drop[a] = true
	}
	var out []graph.Dim
	for i, d := range x {
		if len(axes) == 0 && d.Known() && d.Value == 1 || drop[i] {
			continue
		}
		out = append(out, d)
	}
	if len(out) != rank {
		return nil
	}
	return out
}

// concatDims: the axis adds up when every input's size is known; the
// other dims come from the first input that knows them.
func concatDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	a := n.AttrInt("axis", 0)
	if a < 0 {
		a += int64(rank)
	}
	if a < 0 || a >= int64(rank) {
		return nil
	}
	out := unknownDims(rank)
	total := int64(0)
	for _, in := range n.Inputs() {
		d := s.dimsOf(in)
		if len(d) != rank {
			return nil
		}
		for i := range rank {
			if int64(i) != a && !out[i].Known() && out[i].Param == "" {
				out[i] = d[i]
			}
		}
		if total >= 0 && d[a].Known() {
			total += d[a].Value
		} else {
			total = -1
		}
	}
	out[a] = graph.Dim{Value: total}
	return out
}

// splitDims: output idx of Split has the input's dims but along the axis
// its piece's size: from the split input (opset 13+) or attribute, else
// an equal share (the last piece smaller, as opset 18's num_outputs).
func splitDims(s *Inferer, n *graph.Node, idx, rank int) []graph.Dim {
	a := n.AttrInt("axis", 0)
	if a < 0 {
		a += int64(rank)
	}
	in := s.dimsOf(n.Input(0))
	if a < 0 || a >= int64(rank) || len(in) != rank {
		return nil
	}
	out := append([]graph.Dim(nil), in...)
	var sizes []int64
	if at := n.Attr("split"); at != nil {
		sizes = at.Ints
	} else if n.NumInputs() > 1 && n.Input(1) != nil {
		t := graph.ConstTensor(n.Input(1))
		if t == nil {
			out[a] = graph.Dim{Value: -1}
			return out
		}
		var err error
		if sizes, err = t.Int64s(); err != nil {
			return nil
		}
	}
	k := len(n.Outputs())
	switch {
	case sizes != nil && idx < len(sizes):
		out[a] = graph.Dim{Value: sizes[idx]}
	case sizes == nil && in[a].Known() && k > 0:
		share := (in[a].Value + int64(k) - 1) / int64(k)
		out[a] = graph.Dim{Value: max(0, min(share, in[a].Value-share*int64(idx)))}
	default:
		out[a] = graph.Dim{Value: -1}
	}
	return out
}

// concatValue and concatLength join shape vectors.
func concatValue(s *Inferer, n *graph.Node) []graph.Dim {
	var out []graph.Dim
	for _, in := range n.Inputs() {
		p := s.shapeValue(in)
		if p == nil {
			return nil
		}
		out = append(out, p...)
	}
	return out
}

func concatLength(s *Inferer, n *graph.Node) int {
	total := 0
	for _, in := range n.Inputs() {
		l := s.Length1D(in)
		if l < 0 {
			return -1
		}
		total += l
	}
	return total
}

// transposeDims permutes x's dims by perm (reversed when absent).
func transposeDims(s *Inferer, n *graph.Node, rank int) []graph.Dim {
	x := s.dimsOf(n.Input(0))
	if len(x) != rank {
		return nil
	}
	perm := n.AttrInts("perm")
	if perm != nil && len(perm) != rank {
		return nil // an invalid node
	}
	out := make([]graph.Dim, rank)
	for i := range out {
		p := int64(rank - 1 - i)
		if perm != nil {
			p = perm[i]
		}
		if p < 0 || p >= int64(rank) {
			return nil
		}
		out[i] = x[p]
	}
	return out
}
