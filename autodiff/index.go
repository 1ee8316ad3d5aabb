package autodiff

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
	a, err := graph.NormAxis(n.AttrInt("axis", 0), r)
	if err != nil {
		return nil, err
	}
	s := c.Shape(x)
	// x's dims before and after the axis.
	pre := func() *graph.Value { return c.Op("Slice", vals(s, c.Ints(0), c.Ints(a))) }
	post := func() *graph.Value { return c.Op("Slice", vals(s, c.Ints(a+1), c.Ints(math.MaxInt64))) }
	flat := c.Op("Reshape", vals(idx, c.Ints(-1)))
	switch {
	case c.Opset >= 16:
		var g *graph.Value
		if c.Inf.Rank(idx) == 1 {
			g = gy
		} else {
			g = c.Op("Reshape", vals(gy, c.Op("Concat", vals(pre(), c.Ints(-1), post()), graph.AttrI("axis", 0))))
		}
		along := make([]int64, r)
		for i := range along {
			along[i] = 1
		}
		along[a] = -1
		pos := c.Op("Expand", vals(c.Op("Reshape", vals(flat, c.Ints(along...))), c.Op("Shape", vals(g))))
		zeros, err := c.ZerosLike(x)
		if err != nil {
			return nil, err
		}
		gx := c.Op("ScatterElements", vals(zeros, pos, g), graph.AttrI("axis", a), graph.AttrS("reduction", "add"))
		return vals(gx, nil), nil
	case c.Opset >= 11:
		size := c.Op("Gather", vals(s, c.Int0(a)), graph.AttrI("axis", 0))
		if c.Inf.DType(idx) != graph.Int64 {
			flat = c.Op("Cast", vals(flat), graph.AttrI("to", int64(graph.Int64)))
		}
		flat = c.Op("Where", vals(c.Op("Less", vals(flat, c.Int0(0))), c.Op("Add", vals(flat, size)), flat))
		hit := c.Op("Equal", vals(c.Unsqueeze(c.Op("Range", vals(c.Int0(0), size, c.Int0(1))), 1), c.Unsqueeze(flat, 0)))
		oneHot, err := c.CastTo(hit, x)
		if err != nil {
			return nil, err
		}
		// gy as [prod(pre), #indices, prod(post)]; the trailing 1 keeps
		// ReduceProd off empty tensors.
		prod := func(v *graph.Value) *graph.Value {
			return c.Op("ReduceProd", vals(c.Op("Concat", vals(v, c.Ints(1)), graph.AttrI("axis", 0))), graph.AttrI("keepdims", 1))
		}
		g3 := c.Op("Reshape", vals(gy, c.Op("Concat", vals(prod(pre()), c.Ints(-1), prod(post())), graph.AttrI("axis", 0))))
		gx := c.ReshapeLike(c.Op("MatMul", vals(oneHot, g3)), x)
		return vals(gx, nil), nil
	}
	return nil, fmt.Errorf("the gradient needs Range (opset 11; model has %d)", c.Opset)
}

// GatherElements(x, idx, axis): gx = ScatterElements(0, idx, gy, add).
func gradGatherElements(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if c.Opset < 16 {
		return nil, fmt.Errorf("repeated indices need ScatterElements with reduction=add (opset 16; model has %d)", c.Opset)
	}
	x := n.Input(0)
	zeros, err := c.ZerosLike(x)
	if err != nil {
		return nil, err
	}
	gx := c.Op("ScatterElements", vals(zeros, n.Input(1), gys[0]), graph.AttrI("axis", n.AttrInt("axis", 0)), graph.AttrS("reduction", "add"))
	return vals(gx, nil), nil
}

// GatherND(x, idx) with batch_dims = 0: gx = ScatterND(0, idx, gy, add).
// Negative indices are made positive first: GatherND takes them,
// ScatterND's spec does not promise to.
func gradGatherND(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if b := n.AttrInt("batch_dims", 0); b != 0 {
		return nil, fmt.Errorf("batch_dims=%d is not supported (only 0)", b)
	}
	if c.Opset < 16 {
		return nil, fmt.Errorf("repeated indices need ScatterND with reduction=add (opset 16; model has %d)", c.Opset)
	}
	x, idx := n.Input(0), n.Input(1)
	// The sizes of the axes idx addresses: x's leading idx.shape[-1] dims.
	depth := c.Op("Slice", vals(c.Op("Shape", vals(idx)), c.Ints(-1), c.Ints(math.MaxInt64)))
	sizes := c.Op("Slice", vals(c.Shape(x), c.Ints(0), depth))
	pos := c.Op("Where", vals(c.Op("Less", vals(idx, c.Int0(0))), c.Op("Add", vals(idx, sizes)), idx))
	zeros, err := c.ZerosLike(x)
	if err != nil {
		return nil, err
	}
	gx := c.Op("ScatterND", vals(zeros, pos, gys[0]), graph.AttrS("reduction", "add"))
	return vals(gx, nil), nil
}
