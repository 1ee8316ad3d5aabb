package rewrite

// gradCtx helpers shared by the rules in grad_pointwise.go, grad_norm.go,
// grad_shape.go and grad_index.go: typed zeros, casts, opset-aware
// ReduceMean, int64 scalars and reading constant inputs.

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// zerosLike is a tensor of zeros shaped and typed like v. Broadcasting a
// cached scalar costs one Expand, and needs no typed ConstantOfShape value.
func (c *gradCtx) zerosLike(v *graph.Value) (*graph.Value, error) {
	z, err := c.scalar(0, v)
	if err != nil {
		return nil, err
	}
	return c.op("Expand", vals(z, c.shape(v))), nil
}

// castTo converts v to the element type of like when they may differ.
func (c *gradCtx) castTo(v, like *graph.Value) (*graph.Value, error) {
	dv, dl := c.inf.dtype(v), c.inf.dtype(like)
	switch {
	case dv != graph.Undefined && dv == dl:
		return v, nil
	case dl != graph.Undefined:
		return c.op("Cast", vals(v), graph.AttrI("to", int64(dl))), nil
	case c.opset >= 15:
		return c.op("CastLike", vals(v, like)), nil
	}
	return nil, fmt.Errorf("the element type of %q is not known statically", like.Name)
}

// reduceMean averages x over axes (negative axes allowed), keeping them,
// in the form the opset wants (axes became an input in opset 18).
func (c *gradCtx) reduceMean(x *graph.Value, axes []int64) *graph.Value {
	keep := graph.AttrI("keepdims", 1)
	if c.opset >= 18 {
		return c.op("ReduceMean", vals(x, c.ints(axes...)), keep)
	}
	return c.op("ReduceMean", vals(x), keep, graph.AttrIs("axes", axes...))
}

// int0 is a rank-0 int64 constant (Range bounds, scalar Gather indices).
func (c *gradCtx) int0(x int64) *graph.Value {
	key := fmt.Sprintf("int0/%d", x)
	if v := c.cache[key]; v != nil {
		return v
	}
	raw := make([]byte, 8)
	binary.LittleEndian.PutUint64(raw, uint64(x))
	v := c.g.Root().AddInitializer(graph.NewTensor("grad.int", graph.Int64, nil, raw))
	c.inf.set(v, staticInfo{dt: graph.Int64, rank: 0, dims: []graph.Dim{}})
	c.cache[key] = v
	return v
}

// bools is a 1-D bool constant (masks over a shape vector).
func (c *gradCtx) bools(xs ...bool) *graph.Value {
	key := fmt.Sprintf("bools/%v", xs)
	if v := c.cache[key]; v != nil {
		return v
	}
	raw := make([]byte, len(xs))
	for i, b := range xs {
		if b {
			raw[i] = 1
		}
	}
	v := c.g.Root().AddInitializer(graph.NewTensor("grad.mask", graph.Bool, []int64{int64(len(xs))}, raw))
	c.cache[key] = v
	return v
}

// dimOf is x's size along axis (negative counts from the end) as a 1-D
// int64 tensor of one element.
func (c *gradCtx) dimOf(x *graph.Value, axis int64) *graph.Value {
	return c.op("Gather", vals(c.shape(x), c.ints(axis)), graph.AttrI("axis", 0))
}

// normAxis maps a possibly negative axis into [0, rank).
func normAxis(axis int64, rank int) (int64, error) {
	if axis < -int64(rank) || axis >= int64(rank) {
		return 0, fmt.Errorf("axis %d is out of range for rank %d", axis, rank)
	}
	if axis < 0 {
		axis += int64(rank)
	}
	return axis, nil
}

// constInts returns the values of a constant integer input.
func constInts(v *graph.Value) ([]int64, bool) {
	t := constTensor(v)
	if t == nil {
		return nil, false
	}
	xs, err := t.Int64s()
	return xs, err == nil
}

// constFloats returns the values of a constant float or integer input.
func constFloats(v *graph.Value) ([]float64, bool) {
	t := constTensor(v)
	if t == nil {
		return nil, false
	}
	if xs, err := t.Int64s(); err == nil {
		out := make([]float64, len(xs))
		for i, x := range xs {
			out[i] = float64(x)
		}
		return out, true
	}
	if t.DType == graph.Double {
		raw, err := t.Bytes()
		if err != nil {
			return nil, false
		}
		out := make([]float64, len(raw)/8)
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		}
		return out, true
	}
	fs, err := t.Floats()
	if err != nil {
		return nil, false
	}
	out := make([]float64, len(fs))
	for i, f := range fs {
		out[i] = float64(f)
	}
	return out, true
}

// optInput is input i of n, nil when it is omitted.
func optInput(n *graph.Node, i int) *graph.Value {
	if i >= n.NumInputs() {
		return nil
	}
	return n.Input(i)
}

// iota64 is [from, from+1, ..., to-1].
func iota64(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
