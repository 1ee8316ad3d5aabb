// Package opb is the opset-aware op builder the training compiler builds
// with: the loss, the gradient rules, the optimizer and the unroll pass
// all emit the same handful of ops (ReduceSum, Squeeze, Slice, Gemm, typed
// constants, ...), whose form depends on the model's opset (axes as an
// attribute or an input, Gemm's C optional or not). Those forms are
// decided here, once, when the node is built.
//
// Errors are sticky: a helper that cannot build what was asked records
// the first error (Err) and returns nil, so callers write formulas and
// check once at the end.
package opb

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// Builder builds nodes in a model's main graph.
type Builder struct {
	G     *graph.Graph
	Opset int64 // the default domain's opset
	Inf   *infer.Inferer
	// Scope names the outputs of Op and OpN: Scope + "/" + op.
	Scope string

	b     *graph.Builder
	cache map[string]*graph.Value
	err   error
}

// New makes a builder on m's main graph; nodes are named prefix/Op_N and
// outputs scope/Op.
func New(m *graph.Model, prefix, scope string, inf *infer.Inferer) *Builder {
	g := m.Graph
	return &Builder{G: g, Opset: m.OpsetVersion(""), Inf: inf, Scope: scope, b: &graph.Builder{G: g, Prefix: prefix}, cache: map[string]*graph.Value{}}
}

// Err is the first error a helper recorded.
func (b *Builder) Err() error { return b.err }

// Fail records err unless an earlier error is recorded.
func (b *Builder) Fail(err error) {
	if b.err == nil && err != nil {
		b.err = err
	}
}

// Op adds a node with one output named after the scope. After an error
// it builds nothing and returns nil (as do all helpers).
func (b *Builder) Op(op string, ins []*graph.Value, attrs ...*graph.Attr) *graph.Value {
	if b.err != nil {
		return nil
	}
	return b.b.Op(op, b.Scope+"/"+op, ins, attrs...)
}

// OpN adds a node with n outputs named after the scope.
func (b *Builder) OpN(op string, n int, ins []*graph.Value, attrs ...*graph.Attr) []*graph.Value {
	if b.err != nil {
		return make([]*graph.Value, n)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s/%s_%d", b.Scope, op, i)
	}
	return b.b.OpN(op, names, ins, attrs...)
}

// Named adds a node whose output has the given name (made unique).
func (b *Builder) Named(op, out string, ins []*graph.Value, attrs ...*graph.Attr) *graph.Value {
	return b.b.Op(op, out, ins, attrs...)
}

// Int64s adds a named 1-D int64 constant.
func (b *Builder) Int64s(name string, xs []int64) *graph.Value { return b.b.Int64s(name, xs) }

// Const adds t as an initializer (renamed if its name is taken).
func (b *Builder) Const(t *graph.Tensor) *graph.Value { return b.b.Const(t) }

// Scalar is a rank-0 constant of like's element type (float32 when
// unknown), built once per type and value.
func (b *Builder) Scalar(x float64, like *graph.Value) *graph.Value {
	if b.err != nil {
		return nil
	}
	dt := b.Inf.DType(like)
	if dt == graph.Undefined {
		dt = graph.Float
	}
	key := fmt.Sprintf("scalar/%s/%v", dt, x)
	if v := b.cache[key]; v != nil {
		return v
	}
	var t *graph.Tensor
	var err error
	if dt == graph.Double {
		raw := make([]byte, 8)
		binary.LittleEndian.PutUint64(raw, math.Float64bits(x))
		t = graph.NewTensor("grad.const", dt, nil, raw)
	} else if t, err = graph.NewFloatTensor("grad.const", dt, nil, []float32{float32(x)}); err != nil {
		b.Fail(fmt.Errorf("constant %v for %q: %w", x, like.Name, err))
		return nil
	}
	v := b.G.Root().AddInitializer(t)
	b.Inf.Set(v, infer.Info{DType: dt, Rank: 0, Dims: []graph.Dim{}})
	b.cache[key] = v
	return v
}

// K is Scalar, short for use inside formulas: Sub(K(1, y), y).
func (b *Builder) K(x float64, like *graph.Value) *graph.Value { return b.Scalar(x, like) }

// Ints is a 1-D int64 constant (axes, shapes, perms).
func (b *Builder) Ints(xs ...int64) *graph.Value {
	key := fmt.Sprintf("ints/%v", xs)
	if v := b.cache[key]; v != nil {
		return v
	}
	v := (&graph.Builder{G: b.G.Root()}).Int64s("grad.ints", xs)
	b.cache[key] = v
	return v
}

// Int0 is a rank-0 int64 constant (Range bounds, scalar Gather indices).
func (b *Builder) Int0(x int64) *graph.Value {
	key := fmt.Sprintf("int0/%d", x)
	if v := b.cache[key]; v != nil {
		return v
	}
	raw := make([]byte, 8)
	binary.LittleEndian.PutUint64(raw, uint64(x))
	v := b.G.Root().AddInitializer(graph.NewTensor("grad.int", graph.Int64, nil, raw))
	b.Inf.Set(v, infer.Info{DType: graph.Int64, Rank: 0, Dims: []graph.Dim{}})
	b.cache[key] = v
	return v
}

// Bools is a 1-D bool constant (masks over a shape vector).
func (b *Builder) Bools(xs ...bool) *graph.Value {
	key := fmt.Sprintf("bools/%v", xs)
	if v := b.cache[key]; v != nil {
		return v
	}
	raw := make([]byte, len(xs))
	for i, x := range xs {
		if x {
			raw[i] = 1
		}
	}
	v := b.G.Root().AddInitializer(graph.NewTensor("grad.mask", graph.Bool, []int64{int64(len(xs))}, raw))
	b.cache[key] = v
	return v
}

// Shape is Shape(v), built once per value.
func (b *Builder) Shape(v *graph.Value) *graph.Value {
	if b.err != nil {
		return nil
	}
	key := "shape/" + v.Name
	if s := b.cache[key]; s != nil {
		return s
	}
	s := b.b.Op("Shape", v.Name+".shape", []*graph.Value{v})
	b.cache[key] = s
	return s
}

// ReduceSum sums x over axes (nil: all axes); axes became an input in
// opset 13.
func (b *Builder) ReduceSum(x *graph.Value, axes []int64, keepdims bool) *graph.Value {
	keep := graph.AttrI("keepdims", boolInt(keepdims))
	if axes == nil {
		return b.Op("ReduceSum", []*graph.Value{x}, keep)
	}
	if b.Opset >= 13 {
		return b.Op("ReduceSum", []*graph.Value{x, b.Ints(axes...)}, keep)
	}
	return b.Op("ReduceSum", []*graph.Value{x}, keep, graph.AttrIs("axes", axes...))
}

// ReduceSumDyn sums over axes given as a run-time tensor, keeping them;
// empty axes leave x as it is (opset 13+).
func (b *Builder) ReduceSumDyn(x, axes *graph.Value) *graph.Value {
	return b.Op("ReduceSum", []*graph.Value{x, axes}, graph.AttrI("keepdims", 1), graph.AttrI("noop_with_empty_axes", 1))
}

// ReduceMean averages x over axes, keeping them; axes became an input in
// opset 18.
func (b *Builder) ReduceMean(x *graph.Value, axes []int64) *graph.Value {
	keep := graph.AttrI("keepdims", 1)
	if b.Opset >= 18 {
		return b.Op("ReduceMean", []*graph.Value{x, b.Ints(axes...)}, keep)
	}
	return b.Op("ReduceMean", []*graph.Value{x}, keep, graph.AttrIs("axes", axes...))
}

// Unsqueeze inserts size-1 axes (axes an input from opset 13).
func (b *Builder) Unsqueeze(x *graph.Value, axes ...int64) *graph.Value {
	if b.Opset >= 13 {
		return b.Op("Unsqueeze", []*graph.Value{x, b.Ints(axes...)})
	}
	return b.Op("Unsqueeze", []*graph.Value{x}, graph.AttrIs("axes", axes...))
}

// Squeeze removes size-1 axes (axes an input from opset 13).
func (b *Builder) Squeeze(x *graph.Value, axes ...int64) *graph.Value {
	if b.Opset >= 13 {
		return b.Op("Squeeze", []*graph.Value{x, b.Ints(axes...)})
	}
	return b.Op("Squeeze", []*graph.Value{x}, graph.AttrIs("axes", axes...))
}

// Slice takes x[start:end] along axis (bounds attributes before opset 10).
func (b *Builder) Slice(x *graph.Value, start, end, axis int64) *graph.Value {
	if b.Opset < 10 {
		if end == math.MaxInt64 {
			end = math.MaxInt32
		}
		return b.Op("Slice", []*graph.Value{x}, graph.AttrIs("starts", start), graph.AttrIs("ends", end), graph.AttrIs("axes", axis))
	}
	return b.Op("Slice", []*graph.Value{x, b.Ints(start), b.Ints(end), b.Ints(axis)})
}

// Gemm is Gemm(x, y) with the given attributes; before opset 11, where C
// is required, it adds a zero scalar C of x's type.
func (b *Builder) Gemm(x, y *graph.Value, attrs ...*graph.Attr) *graph.Value {
	ins := []*graph.Value{x, y}
	if b.Opset < 11 {
		ins = append(ins, b.Scalar(0, x))
	}
	return b.Op("Gemm", ins, attrs...)
}

// Pad pads x with zeros, pads as ONNX orders them (all begins, then all
// ends); an attribute before opset 11, an input after.
func (b *Builder) Pad(x *graph.Value, pads []int64) *graph.Value {
	if b.Opset < 11 {
		return b.Op("Pad", []*graph.Value{x}, graph.AttrIs("pads", pads...))
	}
	return b.Op("Pad", []*graph.Value{x, b.Ints(pads...)})
}

// ReshapeLike gives g the shape of like.
func (b *Builder) ReshapeLike(g, like *graph.Value) *graph.Value {
	return b.Reshape(g, b.Shape(like))
}

// ZerosLike is a tensor of zeros shaped and typed like v: one Expand of a
// cached scalar, so no typed ConstantOfShape value is needed.
func (b *Builder) ZerosLike(v *graph.Value) *graph.Value {
	return b.Expand(b.Scalar(0, v), b.Shape(v))
}

// CastTo converts v to the element type of like when they may differ:
// Cast when like's type is known, CastLike (opset 15+) when not.
func (b *Builder) CastTo(v, like *graph.Value) *graph.Value {
	if b.err != nil {
		return nil
	}
	dv, dl := b.Inf.DType(v), b.Inf.DType(like)
	switch {
	case dv != graph.Undefined && dv == dl:
		return v
	case dl != graph.Undefined:
		return b.Cast(v, dl)
	case b.Opset >= 15:
		return b.Op("CastLike", vals(v, like))
	}
	b.Fail(fmt.Errorf("the element type of %q is not known statically", like.Name))
	return nil
}

// DimOf is x's size along axis (negative counts from the end) as a 1-D
// int64 tensor of one element.
func (b *Builder) DimOf(x *graph.Value, axis int64) *graph.Value {
	return b.Gather(b.Shape(x), b.Ints(axis), 0)
}

func boolInt(x bool) int64 {
	if x {
		return 1
	}
	return 0
}
