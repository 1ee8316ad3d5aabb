package rewrite

// Gradient rules for indexed reads: Gather, GatherElements, GatherND.
// Their gradient scatters gy back into zeros shaped like the data, adding
// where an index repeats (an embedding row used twice gets both
// gradients). Scatter with reduction="add" exists from opset 16; before
// that only Gather has a fallback. Indices get no gradient.

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// Gather(x, idx, axis): y = x[..., idx, ...], with idx's dims in place of
// axis. From opset 16 gy is reshaped to x's shape with the axis replaced
// by the flattened indices and scatter-added (ScatterElements, which takes
// negative indices). From opset 11 to 15 it is a product with a one-hot
// [size(axis), #indices] matrix, which costs that matrix's memory.
func gradGather(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x, idx, gy := n.Input(0), n.Input(1), gys[0]
	r, err := c.rank(x)
	if err != nil {
		return nil, err
	}
	a, err := normAxis(n.AttrInt("axis", 0), r)
	if err != nil {
		return nil, err
	}
	s := c.shape(x)
	// x's dims before and after the axis.
	pre := func() *graph.Value { return c.op("Slice", vals(s, c.ints(0), c.ints(a))) }
	post := func() *graph.Value { return c.op("Slice", vals(s, c.ints(a+1), c.ints(math.MaxInt64))) }
	flat := c.op("Reshape", vals(idx, c.ints(-1)))
	switch {
	case c.opset >= 16:
		var g *graph.Value
		if c.inf.rank(idx) == 1 {
			g = gy
		} else {
			g = c.op("Reshape", vals(gy, c.op("Concat", vals(pre(), c.ints(-1), post()), graph.AttrI("axis", 0))))
		}
		along := make([]int64, r)
		for i := range along {
			along[i] = 1
		}
		along[a] = -1
		pos := c.op("Expand", vals(c.op("Reshape", vals(flat, c.ints(along...))), c.op("Shape", vals(g))))
		zeros, err := c.zerosLike(x)
		if err != nil {
			return nil, err
		}
		gx := c.op("ScatterElements", vals(zeros, pos, g), graph.AttrI("axis", a), graph.AttrS("reduction", "add"))
		return vals(gx, nil), nil
	case c.opset >= 11:
		size := c.op("Gather", vals(s, c.int0(a)), graph.AttrI("axis", 0))
		if c.inf.dtype(idx) != graph.Int64 {
			flat = c.op("Cast", vals(flat), graph.AttrI("to", int64(graph.Int64)))
		}
		flat = c.op("Where", vals(c.op("Less", vals(flat, c.int0(0))), c.op("Add", vals(flat, size)), flat))
		hit := c.op("Equal", vals(c.unsqueeze(c.op("Range", vals(c.int0(0), size, c.int0(1))), 1), c.unsqueeze(flat, 0)))
		oneHot, err := c.castTo(hit, x)
		if err != nil {
			return nil, err
		}
		// gy as [prod(pre), #indices, prod(post)]; the trailing 1 keeps
		// ReduceProd off empty tensors.
		prod := func(v *graph.Value) *graph.Value {
			return c.op("ReduceProd", vals(c.op("Concat", vals(v, c.ints(1)), graph.AttrI("axis", 0))), graph.AttrI("keepdims", 1))
		}
		g3 := c.op("Reshape", vals(gy, c.op("Concat", vals(prod(pre()), c.ints(-1), prod(post())), graph.AttrI("axis", 0))))
		gx := c.reshapeLike(c.op("MatMul", vals(oneHot, g3)), x)
		return vals(gx, nil), nil
	}
	return nil, fmt.Errorf("the gradient needs Range (opset 11; model has %d)", c.opset)
}

// GatherElements(x, idx, axis): gx = ScatterElements(0, idx, gy, add).
func gradGatherElements(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if c.opset < 16 {
		return nil, fmt.Errorf("repeated indices need ScatterElements with reduction=add (opset 16; model has %d)", c.opset)
	}
	x := n.Input(0)
	zeros, err := c.zerosLike(x)
	if err != nil {
		return nil, err
	}
	gx := c.op("ScatterElements", vals(zeros, n.Input(1), gys[0]), graph.AttrI("axis", n.AttrInt("axis", 0)), graph.AttrS("reduction", "add"))
	return vals(gx, nil), nil
}

// GatherND(x, idx) with batch_dims = 0: gx = ScatterND(0, idx, gy, add).
// Negative indices are made positive first: GatherND takes them,
// ScatterND's spec does not promise to.
func gradGatherND(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if b := n.AttrInt("batch_dims", 0); b != 0 {
		return nil, fmt.Errorf("batch_dims=%d is not supported (only 0)", b)
	}
	if c.opset < 16 {
		return nil, fmt.Errorf("repeated indices need ScatterND with reduction=add (opset 16; model has %d)", c.opset)
	}
	x, idx := n.Input(0), n.Input(1)
	// The sizes of the axes idx addresses: x's leading idx.shape[-1] dims.
	depth := c.op("Slice", vals(c.op("Shape", vals(idx)), c.ints(-1), c.ints(math.MaxInt64)))
	sizes := c.op("Slice", vals(c.shape(x), c.ints(0), depth))
	pos := c.op("Where", vals(c.op("Less", vals(idx, c.int0(0))), c.op("Add", vals(idx, sizes)), idx))
	zeros, err := c.zerosLike(x)
	if err != nil {
		return nil, err
	}
	gx := c.op("ScatterND", vals(zeros, pos, gys[0]), graph.AttrS("reduction", "add"))
	return vals(gx, nil), nil
}
