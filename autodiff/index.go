package autodiff

// Gradient rules for indexed reads: Gather, GatherElements, GatherND.
// Their gradient scatters gy back into zeros shaped like the data, adding
// where an index repeats (an embedding row used twice gets both
// gradients). Scatter with reduction="add" exists from opset 16; before
// that only Gather has a fallback. Indices get no gradient.

import (
	"math"

	"github.com/loracc/loracc/graph"
)

// Gather(x, idx, axis): y = x[..., idx, ...], with idx's dims in place of
// axis. From opset 16 gy is reshaped to x's shape with the axis replaced
// by the flattened indices and scatter-added (ScatterElements, which takes
// negative indices). From opset 11 to 15 it is a product with a one-hot
// [size(axis), #indices] matrix, which costs that matrix's memory.
func gradGather(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, idx, gy := n.Input(0), n.Input(1), gys[0]
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	a, err := graph.NormAxis(n.AttrInt("axis", 0), r)
	if err != nil {
		return c.failf("%w", err)
	}
	s := c.Shape(x)
	// x's dims before and after the axis.
	pre := func() *graph.Value { return c.SliceT(s, c.Ints(0), c.Ints(a)) }
	post := func() *graph.Value { return c.SliceT(s, c.Ints(a+1), c.Ints(math.MaxInt64)) }
	flat := c.Reshape(idx, c.Ints(-1))
	switch {
	case c.Opset >= 16:
		var g *graph.Value
		if c.Inf.Rank(idx) == 1 {
			g = gy
		} else {
			g = c.Reshape(gy, c.Concat(0, pre(), c.Ints(-1), post()))
		}
		along := make([]int64, r)
		for i := range along {
			along[i] = 1
		}
		along[a] = -1
		pos := c.Expand(c.Reshape(flat, c.Ints(along...)), c.ShapeOf(g))
		gx := c.Op("ScatterElements", vals(c.ZerosLike(x), pos, g), graph.AttrI("axis", a), graph.AttrS("reduction", "add"))
		return vals(gx, nil)
	case c.Opset >= 11:
		size := c.Gather(s, c.Int0(a), 0)
		if c.Inf.DType(idx) != graph.Int64 {
			flat = c.Cast(flat, graph.Int64)
		}
		flat = c.Where(c.Less(flat, c.Int0(0)), c.Add(flat, size), flat)
		hit := c.Equal(c.Unsqueeze(c.Range(c.Int0(0), size, c.Int0(1)), 1), c.Unsqueeze(flat, 0))
		oneHot := c.CastTo(hit, x)
		// gy as [prod(pre), #indices, prod(post)]; the trailing 1 keeps
		// ReduceProd off empty tensors.
		prod := func(v *graph.Value) *graph.Value {
			return c.Op("ReduceProd", vals(c.Concat(0, v, c.Ints(1))), graph.AttrI("keepdims", 1))
		}
		g3 := c.Reshape(gy, c.Concat(0, prod(pre()), c.Ints(-1), prod(post())))
		return vals(c.ReshapeLike(c.MatMul(oneHot, g3), x), nil)
	}
	return c.failf("the gradient needs Range (opset 11; model has %d)", c.Opset)
}

// GatherElements(x, idx, axis): gx = ScatterElements(0, idx, gy, add).
// When idx picks one element along the axis and matches x elsewhere —
// the cross-entropy loss picking each label's log-probability — the
// scatter is a select instead: gx = Where(iota == idx, gy + 0, 0), with
// iota the positions along the axis. Same values (gy + 0 turns −0 into +0
// as adding into zeros does), but elementwise, where ORT's scatter-add on
// a materialised zeros tensor is one of the slowest kernels of the step.
func gradGatherElements(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if gx := c.selectOne(n, gys[0]); gx != nil {
		return vals(gx, nil)
	}
	if c.Opset < 16 {
		return c.failf("repeated indices need ScatterElements with reduction=add (opset 16; model has %d)", c.Opset)
	}
	gx := c.Op("ScatterElements", vals(c.ZerosLike(n.Input(0)), n.Input(1), gys[0]), graph.AttrI("axis", n.AttrInt("axis", 0)), graph.AttrS("reduction", "add"))
	return vals(gx, nil)
}

// GatherND(x, idx) with batch_dims = 0: gx = ScatterND(0, idx, gy, add).
// Negative indices are made positive first: GatherND takes them,
// ScatterND's spec does not promise to.
func gradGatherND(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if b := n.AttrInt("batch_dims", 0); b != 0 {
		return c.failf("batch_dims=%d is not supported (only 0)", b)
	}
	if c.Opset < 16 {
		return c.failf("repeated indices need ScatterND with reduction=add (opset 16; model has %d)", c.Opset)
	}
	x, idx := n.Input(0), n.Input(1)
	// The sizes of the axes idx addresses: x's leading idx.shape[-1] dims.
	depth := c.SliceT(c.ShapeOf(idx), c.Ints(-1), c.Ints(math.MaxInt64))
	sizes := c.SliceT(c.Shape(x), c.Ints(0), depth)
	pos := c.Where(c.Less(idx, c.Int0(0)), c.Add(idx, sizes), idx)
	gx := c.Op("ScatterND", vals(c.ZerosLike(x), pos, gys[0]), graph.AttrS("reduction", "add"))
	return vals(gx, nil)
}

// selectOne is GatherElements' gradient as a select (see above), or nil
// when idx does not pick exactly one element per position along the axis
// of an x whose other dims it shares.
func (c *gradCtx) selectOne(n *graph.Node, gy *graph.Value) *graph.Value {
	x, idx := n.Input(0), n.Input(1)
	xi, ii := c.Inf.Info(x), c.Inf.Info(idx)
	if xi.Dims == nil || ii.Dims == nil || len(xi.Dims) != len(ii.Dims) || c.Opset < 9 {
		return nil
	}
	a, err := graph.NormAxis(n.AttrInt("axis", 0), len(xi.Dims))
	if err != nil || !xi.Dims[a].Known() || ii.Dims[a].Value != 1 || !ii.Dims[a].Known() {
		return nil
	}
	for i := range xi.Dims {
		dx, di := xi.Dims[i], ii.Dims[i]
		same := (dx.Known() && di.Known() && dx.Value == di.Value) || (dx.Param != "" && dx.Param == di.Param)
		if i != int(a) && !same {
			return nil
		}
	}
	dt := c.Inf.DType(idx)
	if dt != graph.Int64 && dt != graph.Int32 {
		return nil
	}
	size := xi.Dims[a].Value
	shape := make([]int64, len(xi.Dims))
	for i := range shape {
		shape[i] = 1
	}
	shape[a] = size
	pos := make([]int64, size)
	for i := range pos {
		pos[i] = int64(i)
	}
	iota := c.Reshape(c.Ints(pos...), c.Ints(shape...))
	if dt == graph.Int32 {
		iota = c.Cast(iota, graph.Int32)
	}
	// Negative indices count from the end, as GatherElements reads them.
	neg := c.Less(idx, c.Cast(c.Ints(0), dt))
	idx = c.Where(neg, c.Add(idx, c.Cast(c.Ints(size), dt)), idx)
	zero := c.K(0, gy)
	val := c.Add(gy, zero)
	gx := c.Where(c.Equal(iota, idx), val, zero)
	c.picks[gx] = pick{idx: idx, val: val, axis: a}
	return gx
}
