package autodiff

// Gradient rules for ops that move data without arithmetic: reshapes,
// transposes, concatenation and splitting, slicing, padding, tiling,
// broadcasting and cumulative sums. Shapes are read at run time (Shape of
// the forward values), so dynamic batch and sequence sizes need nothing
// static beyond ranks and constant axes.

import (
	"github.com/loracc/loracc/graph"
)

// Reshape, Flatten, Squeeze and Unsqueeze only relabel the elements: the
// gradient takes the input's shape back. Shape and axes inputs get
// nothing.
func gradReshape(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.ReshapeLike(gys[0], n.Input(0))
	return out
}

// Transpose: transpose back with the inverse permutation (default perm
// reverses the axes).
func gradTranspose(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	perm := n.AttrInts("perm")
	if perm == nil {
		r := c.rank(n.Input(0))
		if r < 0 {
			return nil
		}
		for i := r - 1; i >= 0; i-- {
			perm = append(perm, int64(i))
		}
	}
	inv := make([]int64, len(perm))
	for i, p := range perm {
		if p < 0 || int(p) >= len(perm) {
			return c.failf("perm %v is not a permutation", perm)
		}
		inv[p] = int64(i)
	}
	return vals(c.Transpose(gys[0], inv...))
}

// Expand broadcasts: the driver sums the gradient back to the input's
// shape.
func gradExpand(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(gys[0], nil)
}

// Concat: split the gradient along the axis at the inputs' sizes. The
// sizes are constants when every input's size along the axis is known;
// otherwise they are read at run time, which needs Split's split input
// (opset 13).
func gradConcat(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	axis := n.AttrInt("axis", 0)
	k := n.NumInputs()
	static := make([]int64, k)
	known := true
	for i := range k {
		d, ok := c.staticDim(n.Input(i), axis)
		static[i] = d
		known = known && ok
	}
	ax := graph.AttrI("axis", axis)
	var parts []*graph.Value
	switch {
	case c.Opset >= 13 && known:
		parts = c.OpN("Split", k, vals(gys[0], c.Ints(static...)), ax)
	case known:
		parts = c.OpN("Split", k, vals(gys[0]), ax, graph.AttrIs("split", static...))
	case c.Opset >= 13:
		sizes := make([]*graph.Value, k)
		for i := range k {
			sizes[i] = c.DimOf(n.Input(i), axis)
		}
		parts = c.OpN("Split", k, vals(gys[0], c.Concat(0, sizes...)), ax)
	default:
		return c.failf("the inputs' sizes along axis %d are not known statically, and Split takes run-time sizes only from opset 13 (model has %d)", axis, c.Opset)
	}
	out := make([]*graph.Value, k)
	for i := range k {
		if c.needs(i) {
			out[i] = parts[i]
		}
	}
	return out
}

// staticDim is v's size along axis when known.
func (c *gradCtx) staticDim(v *graph.Value, axis int64) (int64, bool) {
	in := c.Inf.Info(v)
	if in.Dims == nil {
		return 0, false
	}
	a, err := graph.NormAxis(axis, len(in.Dims))
	if err != nil || !in.Dims[a].Known() {
		return 0, false
	}
	return in.Dims[a].Value, true
}

// Split: concatenate the outputs' gradients along the axis; an output
// nothing differentiates contributes zeros of its shape. The split sizes
// (attribute, input or num_outputs) need not be read.
func gradSplit(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	parts := make([]*graph.Value, len(gys))
	for i, g := range gys {
		if g == nil {
			if n.Output(i) == nil {
				return c.failf("output %d is omitted", i)
			}
			g = c.ZerosLike(n.Output(i))
		}
		parts[i] = g
	}
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.Concat(n.AttrInt("axis", 0), parts...)
	return out
}

// Slice: for each sliced axis, the forward slice is repeated on
// Range(0, size) to get the positions it took — so negative starts,
// clamped ends and any step are ONNX's own semantics — and the gradient is
// scattered to those positions in zeros (ScatterElements; positions are
// distinct, so no reduction is needed). Axes are restored one at a time.
// starts/ends/steps may be computed at run time; axes must be constant.
func gradSlice(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if c.Opset < 11 {
		return c.failf("the gradient needs Range and ScatterElements (opset 11; model has %d)", c.Opset)
	}
	x := n.Input(0)
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	// param(k) is element k of starts, ends or steps as a 1-D tensor.
	type param func(k int) *graph.Value
	fromInput := func(i int, def int64) param {
		v := n.Input(i)
		xs, isConst := graph.ConstInts(v)
		if v != nil && !isConst && c.Inf.DType(v) != graph.Int64 {
			// int32 bounds: match the int64 constants used beside them.
			v = c.Cast(v, graph.Int64)
		}
		return func(k int) *graph.Value {
			switch {
			case v == nil:
				return c.Ints(def)
			case isConst:
				return c.Ints(xs[k])
			}
			return c.SliceT(v, c.Ints(int64(k)), c.Ints(int64(k+1)))
		}
	}
	starts, ends, steps := fromInput(1, 0), fromInput(2, 0), fromInput(4, 1)
	count := c.Inf.Length1D(n.Input(1))
	var axes []int64
	if a := n.Input(3); a != nil {
		xs, ok := graph.ConstInts(a)
		if !ok {
			return c.failf("axes %q are computed at run time; only constant axes are supported", a.Name)
		}
		axes = xs
	}
	if axes == nil {
		if count < 0 {
			return c.failf("the number of sliced axes (length of %q) is not known statically", n.Input(1).Name)
		}
		axes = iota64(0, int64(count))
	}
	g := gys[0]
	for k, a := range axes {
		a, err := graph.NormAxis(a, r)
		if err != nil {
			return c.failf("%w", err)
		}
		size := c.Gather(c.Shape(x), c.Int0(a), 0)
		pos := c.Range(c.Int0(0), size, c.Int0(1))
		taken := c.SliceT(pos, starts(k), ends(k), c.Ints(0), steps(k))
		// Zeros shaped like g with axis a at its full size.
		mask := make([]bool, r)
		mask[a] = true
		full := c.Where(c.Bools(mask...), c.Shape(x), c.ShapeOf(g))
		zeros := c.Expand(c.K(0, g), full)
		along := make([]int64, r)
		for i := range along {
			along[i] = 1
		}
		along[a] = -1
		idx := c.Expand(c.Reshape(taken, c.Ints(along...)), c.ShapeOf(g))
		g = c.Op("ScatterElements", vals(zeros, idx, g), graph.AttrI("axis", a))
	}
	out := make([]*graph.Value, n.NumInputs())
	out[0] = g
	return out
}

// Pad (constant mode): padding by p and padding by −p are adjoint — the
// inner part comes back, and a negative pad (a crop) becomes zeros — so
// the gradient is Pad(gy, −pads) with the same axes. A constant_value
// input that needs a gradient gets the sum of gy over the padding,
// Σgy − ΣPad(gy, −pads). Edge, reflect and wrap modes add copies of
// border elements and are not supported.
func gradPad(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	mode := "constant"
	if a := n.Attr("mode"); a != nil {
		mode = string(a.S)
	}
	if mode != "constant" {
		return c.failf("mode %q is not supported (only constant)", mode)
	}
	out := make([]*graph.Value, n.NumInputs())
	if c.Opset < 11 {
		pads := n.AttrInts("pads")
		neg := make([]int64, len(pads))
		for i, p := range pads {
			neg[i] = -p
		}
		out[0] = c.Op("Pad", vals(gys[0]), graph.AttrIs("pads", neg...))
		return out
	}
	var pads *graph.Value
	if xs, ok := graph.ConstInts(n.Input(1)); ok {
		neg := make([]int64, len(xs))
		for i, p := range xs {
			neg[i] = -p
		}
		pads = c.Ints(neg...)
	} else {
		pads = c.Neg(n.Input(1))
	}
	ins := vals(gys[0], pads)
	if axes := n.Input(3); axes != nil {
		ins = append(ins, nil, axes)
	}
	gx := c.Op("Pad", ins)
	out[0] = gx
	if cv := n.Input(2); cv != nil && c.needs(2) {
		rest := c.Sub(c.ReduceSum(gys[0], nil, false), c.ReduceSum(gx, nil, false))
		out[2] = c.ReshapeLike(rest, cv)
	}
	return out
}

// Tile: x's element j along axis i appears at t·dᵢ + j for every repeat
// t, so the gradient, reshaped to [r₀, d₀, r₁, d₁, ...], is summed over
// the repeat axes.
func gradTile(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, reps := n.Input(0), n.Input(1)
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	pairs := c.Concat(1, c.Unsqueeze(reps, 1), c.Unsqueeze(c.Shape(x), 1))
	split := c.Reshape(gys[0], c.Reshape(pairs, c.Ints(-1)))
	axes := make([]int64, r)
	for i := range axes {
		axes[i] = int64(2 * i)
	}
	return vals(c.ReduceSum(split, axes, false), nil)
}

// CumSum: y_i = Σ_{j≤i} x_j gives dx_j = Σ_{i≥j} gy_i, the cumulative sum
// in the other direction (exclusive stays exclusive).
func gradCumSum(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	rev := 1 - n.AttrInt("reverse", 0)
	g := c.Op("CumSum", vals(gys[0], n.Input(1)), graph.AttrI("exclusive", n.AttrInt("exclusive", 0)), graph.AttrI("reverse", rev))
	return vals(g, nil)
}

// Trilu keeps a triangle: the gradient keeps the same one.
func gradTrilu(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	ins := vals(gys[0])
	if k := n.Input(1); k != nil {
		ins = append(ins, k)
	}
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.Op("Trilu", ins, graph.AttrI("upper", n.AttrInt("upper", 1)))
	return out
}
