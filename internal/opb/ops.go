package opb

// Typed op helpers: one method per standard op the training passes and
// the gradient rules build, so a formula reads like the math it computes
// (Mul(gy, Sub(K(1, y), y)) rather than a nest of Op calls with input
// lists). Each adds one node through Op, so it names its output after the
// scope and, after an error, builds nothing.

import "github.com/loracc/loracc/graph"

func vals(vs ...*graph.Value) []*graph.Value { return vs }

// Add is a + b (broadcasting).
func (b *Builder) Add(x, y *graph.Value) *graph.Value { return b.Op("Add", vals(x, y)) }

// Sub is x − y (broadcasting).
func (b *Builder) Sub(x, y *graph.Value) *graph.Value { return b.Op("Sub", vals(x, y)) }

// Mul is x·y (broadcasting).
func (b *Builder) Mul(x, y *graph.Value) *graph.Value { return b.Op("Mul", vals(x, y)) }

// Div is x / y (broadcasting).
func (b *Builder) Div(x, y *graph.Value) *graph.Value { return b.Op("Div", vals(x, y)) }

// Pow is x^y (broadcasting).
func (b *Builder) Pow(x, y *graph.Value) *graph.Value { return b.Op("Pow", vals(x, y)) }

// MatMul is x @ y (numpy semantics).
func (b *Builder) MatMul(x, y *graph.Value) *graph.Value { return b.Op("MatMul", vals(x, y)) }

// Sum adds any number of tensors (broadcasting).
func (b *Builder) Sum(xs ...*graph.Value) *graph.Value { return b.Op("Sum", xs) }

// Max is the elementwise maximum of xs (broadcasting).
func (b *Builder) Max(xs ...*graph.Value) *graph.Value { return b.Op("Max", xs) }

// Min is the elementwise minimum of xs (broadcasting).
func (b *Builder) Min(xs ...*graph.Value) *graph.Value { return b.Op("Min", xs) }

// Neg is −x.
func (b *Builder) Neg(x *graph.Value) *graph.Value { return b.Op("Neg", vals(x)) }

// Sqrt is √x.
func (b *Builder) Sqrt(x *graph.Value) *graph.Value { return b.Op("Sqrt", vals(x)) }

// Reciprocal is 1/x.
func (b *Builder) Reciprocal(x *graph.Value) *graph.Value { return b.Op("Reciprocal", vals(x)) }

// Exp is eˣ.
func (b *Builder) Exp(x *graph.Value) *graph.Value { return b.Op("Exp", vals(x)) }

// Log is ln x.
func (b *Builder) Log(x *graph.Value) *graph.Value { return b.Op("Log", vals(x)) }

// Tanh is tanh x.
func (b *Builder) Tanh(x *graph.Value) *graph.Value { return b.Op("Tanh", vals(x)) }

// Sigmoid is 1/(1 + e^−x).
func (b *Builder) Sigmoid(x *graph.Value) *graph.Value { return b.Op("Sigmoid", vals(x)) }

// Erf is the error function.
func (b *Builder) Erf(x *graph.Value) *graph.Value { return b.Op("Erf", vals(x)) }

// Sign is −1, 0 or 1 by the sign of x.
func (b *Builder) Sign(x *graph.Value) *graph.Value { return b.Op("Sign", vals(x)) }

// Equal is x == y (broadcasting), a bool tensor.
func (b *Builder) Equal(x, y *graph.Value) *graph.Value { return b.Op("Equal", vals(x, y)) }

// Less is x < y (broadcasting).
func (b *Builder) Less(x, y *graph.Value) *graph.Value { return b.Op("Less", vals(x, y)) }

// Greater is x > y (broadcasting).
func (b *Builder) Greater(x, y *graph.Value) *graph.Value { return b.Op("Greater", vals(x, y)) }

// And is the logical and of two bool tensors.
func (b *Builder) And(x, y *graph.Value) *graph.Value { return b.Op("And", vals(x, y)) }

// Not is the logical negation of a bool tensor.
func (b *Builder) Not(x *graph.Value) *graph.Value { return b.Op("Not", vals(x)) }

// Where is cond ? x : y (broadcasting).
func (b *Builder) Where(cond, x, y *graph.Value) *graph.Value {
	return b.Op("Where", vals(cond, x, y))
}

// Cast converts x to element type dt.
func (b *Builder) Cast(x *graph.Value, dt graph.DataType) *graph.Value {
	return b.Op("Cast", vals(x), graph.AttrI("to", int64(dt)))
}

// Transpose permutes x's axes.
func (b *Builder) Transpose(x *graph.Value, perm ...int64) *graph.Value {
	return b.Op("Transpose", vals(x), graph.AttrIs("perm", perm...))
}

// Reshape gives x the shape held by the 1-D int64 tensor shape.
func (b *Builder) Reshape(x, shape *graph.Value) *graph.Value {
	return b.Op("Reshape", vals(x, shape))
}

// Expand broadcasts x to the shape held by shape.
func (b *Builder) Expand(x, shape *graph.Value) *graph.Value {
	return b.Op("Expand", vals(x, shape))
}

// Concat joins xs along axis.
func (b *Builder) Concat(axis int64, xs ...*graph.Value) *graph.Value {
	return b.Op("Concat", xs, graph.AttrI("axis", axis))
}

// Gather takes x's entries at idx along axis.
func (b *Builder) Gather(x, idx *graph.Value, axis int64) *graph.Value {
	return b.Op("Gather", vals(x, idx), graph.AttrI("axis", axis))
}

// SliceT is Slice with run-time bounds (opset 10+): x, starts, ends and
// then the optional axes and steps.
func (b *Builder) SliceT(x, starts, ends *graph.Value, axesSteps ...*graph.Value) *graph.Value {
	return b.Op("Slice", append(vals(x, starts, ends), axesSteps...))
}

// Range is [start, start+delta, ...) below limit (rank-0 bounds, opset 11+).
func (b *Builder) Range(start, limit, delta *graph.Value) *graph.Value {
	return b.Op("Range", vals(start, limit, delta))
}

// ShapeOf is a new Shape node for x; Shape gives the cached one of a
// value read more than once.
func (b *Builder) ShapeOf(x *graph.Value) *graph.Value { return b.Op("Shape", vals(x)) }

// Size is the number of elements of x, an int64 scalar.
func (b *Builder) Size(x *graph.Value) *graph.Value { return b.Op("Size", vals(x)) }

// NonZero is the indices of x's non-zero elements, [rank, count].
func (b *Builder) NonZero(x *graph.Value) *graph.Value { return b.Op("NonZero", vals(x)) }

// Split cuts x along axis into pieces of the given sizes (an input from
// opset 13, an attribute before).
func (b *Builder) Split(x *graph.Value, axis int64, sizes ...int64) []*graph.Value {
	ax := graph.AttrI("axis", axis)
	if b.Opset >= 13 {
		return b.OpN("Split", len(sizes), vals(x, b.Ints(sizes...)), ax)
	}
	return b.OpN("Split", len(sizes), vals(x), ax, graph.AttrIs("split", sizes...))
}
