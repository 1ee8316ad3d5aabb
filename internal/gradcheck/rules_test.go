package gradcheck

import (
	"fmt"
	"testing"

	"github.com/loracc/loracc/internal/ortest"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

func openEnv(t *testing.T) *runtime.Env {
	return ortest.Env(t)
}

// op builds y = op(inputs in order) with attributes.
func op(name string, ins []string, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		var vs []*graph.Value
		for _, n := range ins {
			if n == "" {
				vs = append(vs, nil)
				continue
			}
			vs = append(vs, in[n])
		}
		return b.Op(name, "y", vs, attrs...), nil
	}
}

func p(name string, shape ...int64) Input { return Input{Name: name, Shape: shape, Param: true} }
func x(name string, shape ...int64) Input { return Input{Name: name, Shape: shape} }

// pos is a parameter with values in [0.5, 1.5].
func pos(name string, shape ...int64) Input {
	return Input{Name: name, Shape: shape, Param: true, Positive: true}
}

// ix is an int64 input with the given shape and values.
func ix(name string, shape []int64, vals ...int64) Input {
	return Input{Name: name, Shape: shape, Int: vals}
}

// fconst is a constant of like's float type.
func fconst(b *graph.Builder, like *graph.Value, dims []int64, xs ...float32) *graph.Value {
	t, err := graph.NewFloatTensor("k", like.Type.DType, dims, xs)
	if err != nil {
		panic(err)
	}
	return b.Const(t)
}

// withInts builds y = op(in[name], int64 constants..., more inputs) —
// shape, axes, pads and index inputs given as constants.
func withInts(name string, data string, consts [][]int64, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		ins := []*graph.Value{in[data]}
		for _, c := range consts {
			if c == nil {
				ins = append(ins, nil)
				continue
			}
			ins = append(ins, b.Int64s("c", c))
		}
		return b.Op(name, "y", ins, attrs...), nil
	}
}

// logSoftmaxPick builds y = GatherElements(LogSoftmax(a, axis=-1), i, axis):
// the cross-entropy's pick, whose gradient gradLogSoftmax forms as a
// scatter from opset 16.
func logSoftmaxPick(axis int64) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		lp := b.Op("LogSoftmax", "lp", []*graph.Value{in["a"]}, graph.AttrI("axis", -1))
		return b.Op("GatherElements", "y", []*graph.Value{lp, in["i"]}, graph.AttrI("axis", axis)), nil
	}
}

// attention builds y = MatMul(p, v)·MatMul(p, v) with p = Softmax(a) over
// the last axis, or its NaN guard Where(IsNaN(p), 0, p) as torch.onnx
// writes scaled_dot_product_attention.
func attention(guard bool) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		p := b.Op("Softmax", "p", []*graph.Value{in["a"]}, graph.AttrI("axis", -1))
		if guard {
			nan := b.Op("IsNaN", "isnan", []*graph.Value{p})
			p = b.Op("Where", "guard", []*graph.Value{nan, fconst(b, in["a"], nil, 0), p})
		}
		o := b.Op("MatMul", "o", []*graph.Value{p, in["v"]})
		return b.Op("Mul", "y", []*graph.Value{o, o}), nil
	}
}

// causal is a [t, k] mask keeping key j ≤ query i + k − t (every row
// keeps at least one key).
func causal(t, k int) []bool {
	m := make([]bool, t*k)
	for i := range t {
		for j := range k {
			m[i*k+j] = j <= i+k-t
		}
	}
	return m
}

// maskedAttention builds attention on masked scores, Where(cond, a, −1e9)
// (or, inverted, Where(Not(cond), −1e9, Cast(a))) into a last-axis
// Softmax, then MatMul with v, y = o·o: the masking Where's scores get
// the softmax's gradient unmasked (maskedScores).
func maskedAttention(inverted bool) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		fill := fconst(b, in["a"], nil, -1e9)
		var s *graph.Value
		if inverted {
			not := b.Op("Not", "not", []*graph.Value{in["cond"]})
			s = b.Op("Where", "masked", []*graph.Value{not, fill, in["a"]})
			s = b.Op("Cast", "cast", []*graph.Value{s}, graph.AttrI("to", int64(in["a"].Type.DType)))
		} else {
			s = b.Op("Where", "masked", []*graph.Value{in["cond"], in["a"], fill})
		}
		p := b.Op("Softmax", "p", []*graph.Value{s}, graph.AttrI("axis", -1))
		o := b.Op("MatMul", "o", []*graph.Value{p, in["v"]})
		return b.Op("Mul", "y", []*graph.Value{o, o}), nil
	}
}

// attentionHeadsBack builds attention whose output o [B, H, T, D] is read
// only by a Transpose keeping the last axis, as a model moves the heads
// back beside the tokens (perm 0 2 1 3): y = t·t with t = Transpose(o,
// perm). The row sums then come from the transpose and its gradient
// (gradSoftmax).
func attentionHeadsBack(perm ...int64) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		p := b.Op("Softmax", "p", []*graph.Value{in["a"]}, graph.AttrI("axis", -1))
		o := b.Op("MatMul", "o", []*graph.Value{p, in["v"]})
		t := b.Op("Transpose", "t", []*graph.Value{o}, graph.AttrIs("perm", perm...))
		return b.Op("Mul", "y", []*graph.Value{t, t}), nil
	}
}

// ints is shorthand for a list of int64 constant inputs.
func ints(xs ...[]int64) [][]int64 { return xs }

func i64(xs ...int64) []int64 { return xs }

// splitThen builds Split and returns out[pick[0]] (+ out[pick[1]] ...).
func splitThen(k int, consts [][]int64, pick []int, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		ins := []*graph.Value{in["a"]}
		for _, c := range consts {
			ins = append(ins, b.Int64s("split", c))
		}
		names := make([]string, k)
		for i := range names {
			names[i] = fmt.Sprintf("part%d", i)
		}
		outs := b.OpN("Split", names, ins, attrs...)
		y := outs[pick[0]]
		for _, i := range pick[1:] {
			y = b.Op("Add", "sum", []*graph.Value{y, outs[i]})
		}
		return y, nil
	}
}

// cases lists one or more finite-difference checks per gradient rule.
// Every case runs in float64 except where ORT 1.29's CPU provider has no
// double kernel (noted per case; float32 cases use 2e-3 tolerance).
func cases() []Case {
	return []Case{
		{Name: "Identity", Inputs: []Input{p("a", 2, 3)}, Build: op("Identity", []string{"a"})},
		{Name: "Add broadcast", Inputs: []Input{p("a", 2, 3, 4), p("b", 3, 1)}, Build: op("Add", []string{"a", "b"})},
		{Name: "Add broadcast symbolic", Symbolic: true, Inputs: []Input{p("a", 2, 3, 4), p("b", 3, 1)}, Build: op("Add", []string{"a", "b"})},
		{Name: "Add scalar", Inputs: []Input{p("a", 2, 3), p("b")}, Build: op("Add", []string{"a", "b"})},
		{Name: "Sub", Inputs: []Input{p("a", 2, 3), p("b", 3)}, Build: op("Sub", []string{"a", "b"})},
		{Name: "Mul", Inputs: []Input{p("a", 2, 3), p("b", 1, 3)}, Build: op("Mul", []string{"a", "b"})},
		{Name: "Mul frozen", Inputs: []Input{p("a", 2, 3), x("b", 2, 3)}, Build: op("Mul", []string{"a", "b"})},
		{Name: "Mul same value twice", Inputs: []Input{p("a", 2, 3)}, Build: op("Mul", []string{"a", "a"})},
		{Name: "Div", Inputs: []Input{p("a", 2, 3), {Name: "b", Shape: []int64{3}, Param: true, Positive: true}}, Build: op("Div", []string{"a", "b"})},
		{Name: "Neg", Inputs: []Input{p("a", 4)}, Build: op("Neg", []string{"a"})},
		{Name: "Sum", Inputs: []Input{p("a", 2, 3), p("b", 3), p("c", 2, 1)}, Build: op("Sum", []string{"a", "b", "c"})},
		{Name: "MatMul 2d", Inputs: []Input{p("a", 3, 4), p("b", 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul batched x matrix", Inputs: []Input{p("a", 2, 3, 4), p("b", 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul rank-4 x matrix (dA as one Gemm, reshaped back)", Inputs: []Input{p("a", 2, 2, 3, 4), p("b", 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul 2d narrow (db as (gyᵀ·a)ᵀ)", Inputs: []Input{p("a", 3, 6), p("b", 6, 2)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul batched x narrow matrix", Inputs: []Input{p("a", 2, 3, 6), p("b", 6, 2)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul batched both", Inputs: []Input{p("a", 2, 3, 4), p("b", 2, 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "MatMul broadcast batch", Inputs: []Input{p("a", 2, 1, 3, 4), p("b", 3, 4, 5)}, Build: op("MatMul", []string{"a", "b"})},
		{Name: "Gemm", Inputs: []Input{p("a", 3, 4), p("b", 4, 5), p("c", 5)}, Build: op("Gemm", []string{"a", "b", "c"}, graph.AttrF("alpha", 0.5), graph.AttrF("beta", 2))},
		{Name: "Gemm transB", Inputs: []Input{p("a", 3, 4), p("b", 5, 4), p("c", 3, 5)}, Build: op("Gemm", []string{"a", "b", "c"}, graph.AttrI("transB", 1))},
		{Name: "Gemm transA transB", Inputs: []Input{p("a", 4, 3), p("b", 5, 4)}, Build: op("Gemm", []string{"a", "b"}, graph.AttrI("transA", 1), graph.AttrI("transB", 1), graph.AttrF("alpha", 1.5))},
		{Name: "Gemm transA", Inputs: []Input{p("a", 4, 3), p("b", 4, 5)}, Build: op("Gemm", []string{"a", "b"}, graph.AttrI("transA", 1))},

		// reductions
		{Name: "ReduceSum opset 11 attr axes keepdims 0", Opset: 11, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("ReduceSum", []string{"a"}, graph.AttrIs("axes", 0, 2), graph.AttrI("keepdims", 0))},
		{Name: "ReduceSum opset 13 input axes negative keepdims 1", Opset: 13, Inputs: []Input{p("a", 2, 3, 4)}, Build: withInts("ReduceSum", "a", ints(i64(-1)), graph.AttrI("keepdims", 1))},
		{Name: "ReduceSum opset 18 keepdims 0", Opset: 18, Inputs: []Input{p("a", 2, 3, 4)}, Build: withInts("ReduceSum", "a", ints(i64(1)), graph.AttrI("keepdims", 0))},
		{Name: "ReduceSum all keepdims 1", Inputs: []Input{p("a", 2, 3)}, Build: op("ReduceSum", []string{"a"}, graph.AttrI("keepdims", 1))},
		{Name: "ReduceMean opset 11 keepdims 0", Opset: 11, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("ReduceMean", []string{"a"}, graph.AttrIs("axes", -1), graph.AttrI("keepdims", 0))},
		{Name: "ReduceMean opset 18 keepdims 1", Opset: 18, Inputs: []Input{p("a", 2, 3, 4)}, Build: withInts("ReduceMean", "a", ints(i64(0, -2)), graph.AttrI("keepdims", 1))},

		// elementwise
		{Name: "Pow both broadcast", Inputs: []Input{pos("a", 2, 3), p("b", 3)}, Build: op("Pow", []string{"a", "b"})},
		{Name: "Pow constant exponent", Inputs: []Input{p("a", 2, 3)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			return b.Op("Pow", "y", []*graph.Value{in["a"], fconst(b, in["a"], nil, 3)}), nil
		}},
		{Name: "Pow int exponent", Inputs: []Input{p("a", 2, 3)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			return b.Op("Pow", "y", []*graph.Value{in["a"], b.Int64s("two", i64(2))}), nil
		}},
		{Name: "Pow exponent only", Inputs: []Input{{Name: "a", Shape: []int64{2, 3}, Positive: true}, p("b", 2, 1)}, Build: op("Pow", []string{"a", "b"})},
		{Name: "Pow zero base, exponent gradient", Inputs: []Input{{Name: "a", Shape: []int64{3}, Float: []float64{0, 0.5, 2}}, pos("b", 3)}, Build: op("Pow", []string{"a", "b"})},
		{Name: "Pow zero exponent at zero base", Inputs: []Input{{Name: "a", Shape: []int64{3}, Param: true, Float: []float64{0, 0.5, -0.3}}}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			return b.Op("Pow", "y", []*graph.Value{in["a"], fconst(b, in["a"], []int64{3}, 0, 0, 2)}), nil
		}},
		{Name: "Sqrt", Inputs: []Input{pos("a", 2, 3)}, Build: op("Sqrt", []string{"a"})},
		{Name: "Reciprocal", Inputs: []Input{pos("a", 2, 3)}, Build: op("Reciprocal", []string{"a"})},
		{Name: "Exp", Inputs: []Input{p("a", 2, 3)}, Build: op("Exp", []string{"a"})},
		{Name: "Log", Inputs: []Input{pos("a", 2, 3)}, Build: op("Log", []string{"a"})},
		{Name: "Tanh", Inputs: []Input{p("a", 2, 3)}, Build: op("Tanh", []string{"a"})},
		{Name: "Sigmoid", Inputs: []Input{p("a", 2, 3)}, Build: op("Sigmoid", []string{"a"})},
		{Name: "Relu", Inputs: []Input{p("a", 3, 4)}, Build: op("Relu", []string{"a"})},
		// ORT has Erf (and so Gelu "none", a function over Erf) in float32 only.
		{Name: "Erf", DType: graph.Float, Inputs: []Input{p("a", 2, 3)}, Build: op("Erf", []string{"a"})},
		{Name: "Gelu none", Opset: 20, DType: graph.Float, Inputs: []Input{p("a", 2, 5)}, Build: op("Gelu", []string{"a"})},
		{Name: "Gelu tanh", Opset: 20, Inputs: []Input{p("a", 2, 5)}, Build: op("Gelu", []string{"a"}, graph.AttrS("approximate", "tanh"))},
		{Name: "Gelu tanh wide range", Opset: 20, Inputs: []Input{{Name: "a", Shape: []int64{2, 4}, Param: true, Float: []float64{-9, -4, -1.5, -0.2, 0.3, 2, 5, 11}}}, Build: op("Gelu", []string{"a"}, graph.AttrS("approximate", "tanh"))},
		{Name: "Abs", Inputs: []Input{p("a", 3, 4)}, Build: op("Abs", []string{"a"})},
		{Name: "Clip opset 13 inputs", Opset: 13, Inputs: []Input{p("a", 3, 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			a := in["a"]
			return b.Op("Clip", "y", []*graph.Value{a, fconst(b, a, nil, -0.5), fconst(b, a, nil, 0.3)}), nil
		}},
		{Name: "Clip opset 13 bounds are parameters", Opset: 13, Inputs: []Input{p("a", 3, 4), {Name: "lo", Param: true, Float: []float64{-0.4}}, {Name: "hi", Param: true, Float: []float64{0.3}}}, Build: op("Clip", []string{"a", "lo", "hi"})},
		{Name: "Clip opset 13 max only", Opset: 13, Inputs: []Input{p("a", 3, 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			a := in["a"]
			return b.Op("Clip", "y", []*graph.Value{a, nil, fconst(b, a, nil, 0.3)}), nil
		}},
		// Clip-6 (attributes) has a float32 kernel only in ORT.
		{Name: "Clip opset 10 attributes", Opset: 10, DType: graph.Float, Inputs: []Input{p("a", 3, 4)}, Build: op("Clip", []string{"a"}, graph.AttrF("min", -0.5), graph.AttrF("max", 0.3))},
		{Name: "Max broadcast", Inputs: []Input{p("a", 2, 3), p("b", 3)}, Build: op("Max", []string{"a", "b"})},
		{Name: "Max ties split evenly", Inputs: []Input{{Name: "a", Shape: []int64{4}, Param: true, Float: []float64{0.5, -1, 0.25, 2}}, {Name: "b", Shape: []int64{4}, Param: true, Float: []float64{0.5, 1, 0.25, -2}}}, Build: op("Max", []string{"a", "b"})},
		{Name: "Min three inputs", Inputs: []Input{p("a", 2, 3), p("b", 3), p("c", 2, 1)}, Build: op("Min", []string{"a", "b", "c"})},
		{Name: "Where broadcast", Inputs: []Input{{Name: "cond", Shape: []int64{2, 1}, Bool: []bool{true, false}}, p("a", 2, 3), p("b", 3)}, Build: op("Where", []string{"cond", "a", "b"})},
		{Name: "Cast float to double and back", DType: graph.Float, Inputs: []Input{p("a", 2, 3), p("b", 3)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			da := b.Op("Cast", "da", []*graph.Value{in["a"]}, graph.AttrI("to", int64(graph.Double)))
			db := b.Op("Cast", "db", []*graph.Value{in["b"]}, graph.AttrI("to", int64(graph.Double)))
			return b.Op("Cast", "y", []*graph.Value{b.Op("Mul", "m", []*graph.Value{da, db})}, graph.AttrI("to", int64(graph.Float))), nil
		}},
		{Name: "Cast int input gets nothing", Inputs: []Input{p("a", 2, 3), ix("k", i64(3), 1, 2, 3)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			k := b.Op("Cast", "k64", []*graph.Value{in["k"]}, graph.AttrI("to", int64(graph.Double)))
			return b.Op("Mul", "y", []*graph.Value{in["a"], k}), nil
		}},
		{Name: "CastLike", Opset: 15, Inputs: []Input{p("a", 2, 3), x("t", 1)}, Build: op("CastLike", []string{"a", "t"})},

		// normalizations
		{Name: "Softmax last axis", Opset: 13, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Softmax", []string{"a"})},
		{Name: "Softmax middle axis", Opset: 13, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Softmax", []string{"a"}, graph.AttrI("axis", 1))},
		{Name: "Softmax opset 11 coerced to 2-D", Opset: 11, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Softmax", []string{"a"})},
		{Name: "LogSoftmax axis 0", Opset: 13, Inputs: []Input{p("a", 3, 4)}, Build: op("LogSoftmax", []string{"a"}, graph.AttrI("axis", 0))},
		{Name: "LogSoftmax opset 11 axis -2", Opset: 11, Inputs: []Input{p("a", 2, 3, 4)}, Build: op("LogSoftmax", []string{"a"}, graph.AttrI("axis", -2))},
		{Name: "LayerNormalization last axis", Inputs: []Input{p("x", 2, 3, 4), p("s", 4), p("b", 4)}, Build: op("LayerNormalization", []string{"x", "s", "b"}, graph.AttrF("epsilon", 1e-3))},
		{Name: "LayerNormalization with Mean and InvStdDev outputs (read by the rule)", Inputs: []Input{p("x", 2, 3, 4), p("s", 4), p("b", 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			ys := b.OpN("LayerNormalization", []string{"y", "y.mean", "y.inv_std_dev"}, []*graph.Value{in["x"], in["s"], in["b"]}, graph.AttrF("epsilon", 1e-3))
			return ys[0], nil
		}},
		{Name: "SimplifiedLayerNormalization last axis", Inputs: []Input{p("x", 2, 3, 4), p("s", 4)}, Build: op("SimplifiedLayerNormalization", []string{"x", "s"}, graph.AttrF("epsilon", 1e-3))},
		{Name: "SimplifiedLayerNormalization float32 with InvStdVar (read by the rule)", DType: graph.Float, Inputs: []Input{p("x", 2, 3, 4), p("s", 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			ys := b.OpN("SimplifiedLayerNormalization", []string{"y", "y.inv_std_var"}, []*graph.Value{in["x"], in["s"]}, graph.AttrF("epsilon", 1e-3))
			return ys[0], nil
		}},
		{Name: "SimplifiedLayerNormalization with InvStdVar into a product with a param (x̂ = Y/scale)", DType: graph.Float, Inputs: []Input{p("x", 2, 3, 4), p("w", 4, 5)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			scale := fconst(b, in["x"], []int64{4}, 0.7, -1.3, 1.1, 0.4)
			ys := b.OpN("SimplifiedLayerNormalization", []string{"y", "y.inv_std_var"}, []*graph.Value{in["x"], scale}, graph.AttrF("epsilon", 1e-3))
			return b.Op("MatMul", "z", []*graph.Value{ys[0], in["w"]}), nil
		}},
		{Name: "SimplifiedLayerNormalization positive axis", Inputs: []Input{p("x", 2, 3, 4), p("s", 3, 4)}, Build: op("SimplifiedLayerNormalization", []string{"x", "s"}, graph.AttrI("axis", 1))},
		{Name: "LayerNormalization last two axes", Inputs: []Input{p("x", 2, 3, 4), p("s", 3, 4), p("b", 3, 4)}, Build: op("LayerNormalization", []string{"x", "s", "b"}, graph.AttrI("axis", -2))},
		{Name: "LayerNormalization positive axis no bias", Inputs: []Input{p("x", 2, 3, 4), p("s", 3, 4)}, Build: op("LayerNormalization", []string{"x", "s"}, graph.AttrI("axis", 1))},
		{Name: "LayerNormalization bias only", Inputs: []Input{x("x", 2, 3, 4), x("s", 4), p("b", 4)}, Build: op("LayerNormalization", []string{"x", "s", "b"})},
		{Name: "LayerNormalization scale only", Inputs: []Input{x("x", 2, 3, 4), p("s", 4), x("b", 4)}, Build: op("LayerNormalization", []string{"x", "s", "b"})},
		{Name: "LayerNormalization symbolic", Symbolic: true, Inputs: []Input{p("x", 2, 3, 4), p("s", 4), p("b", 4)}, Build: op("LayerNormalization", []string{"x", "s", "b"})},
		// ORT gives Mean and InvStdDev in float32 even for float64 X (and has
		// no kernel for stash_type=float64), so this case runs in float32; a
		// large epsilon keeps 1/σ³ from amplifying the difference error.
		{Name: "LayerNormalization Mean and InvStdDev used", DType: graph.Float, Inputs: []Input{p("x", 2, 3, 4), p("s", 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			o := b.OpN("LayerNormalization", []string{"ln", "mean", "istd"}, []*graph.Value{in["x"], in["s"]}, graph.AttrF("epsilon", 0.5))
			return b.Op("Sum", "y", o), nil
		}},

		// data movement
		{Name: "Reshape", Inputs: []Input{p("a", 2, 3, 4)}, Build: withInts("Reshape", "a", ints(i64(0, -1)))},
		{Name: "Flatten", Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Flatten", []string{"a"}, graph.AttrI("axis", 2))},
		{Name: "Transpose", Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Transpose", []string{"a"}, graph.AttrIs("perm", 2, 0, 1))},
		{Name: "Transpose default perm", Inputs: []Input{p("a", 2, 3, 4)}, Build: op("Transpose", []string{"a"})},
		{Name: "Squeeze opset 11 attr", Opset: 11, Inputs: []Input{p("a", 2, 1, 3)}, Build: op("Squeeze", []string{"a"}, graph.AttrIs("axes", 1))},
		{Name: "Squeeze opset 13 input negative", Opset: 13, Inputs: []Input{p("a", 2, 3, 1)}, Build: withInts("Squeeze", "a", ints(i64(-1)))},
		{Name: "Unsqueeze opset 11 attr", Opset: 11, Inputs: []Input{p("a", 2, 3)}, Build: op("Unsqueeze", []string{"a"}, graph.AttrIs("axes", 0, 3))},
		{Name: "Unsqueeze opset 13 input negative", Opset: 13, Inputs: []Input{p("a", 2, 3)}, Build: withInts("Unsqueeze", "a", ints(i64(-1)))},
		{Name: "Expand", Inputs: []Input{p("a", 3, 1)}, Build: withInts("Expand", "a", ints(i64(2, 3, 4)))},
		{Name: "Concat negative axis one frozen", Inputs: []Input{p("a", 2, 1), x("b", 2, 3), p("c", 2, 2)}, Build: op("Concat", []string{"a", "b", "c"}, graph.AttrI("axis", -1))},
		{Name: "Concat opset 11", Opset: 11, Inputs: []Input{p("a", 1, 3), p("b", 2, 3)}, Build: op("Concat", []string{"a", "b"}, graph.AttrI("axis", 0))},
		{Name: "Concat symbolic", Symbolic: true, Inputs: []Input{p("a", 2, 1), p("b", 2, 3)}, Build: op("Concat", []string{"a", "b"}, graph.AttrI("axis", 1))},
		{Name: "Split opset 11 attr, first output only", Opset: 11, Inputs: []Input{p("a", 2, 3)}, Build: splitThen(2, nil, []int{0}, graph.AttrI("axis", 1), graph.AttrIs("split", 1, 2))},
		{Name: "Split opset 13 input, outputs 0 and 2", Opset: 13, Inputs: []Input{p("a", 6, 2)}, Build: splitThen(3, ints(i64(2, 2, 2)), []int{0, 2})},
		{Name: "Split opset 18 num_outputs, middle output", Opset: 18, Inputs: []Input{p("a", 2, 6)}, Build: splitThen(3, nil, []int{1}, graph.AttrI("axis", -1), graph.AttrI("num_outputs", 3))},
		{Name: "Split symbolic", Symbolic: true, Opset: 18, Inputs: []Input{p("a", 2, 6)}, Build: splitThen(2, nil, []int{1}, graph.AttrI("axis", 1), graph.AttrI("num_outputs", 2))},
		{Name: "Slice negative starts, steps, out-of-range ends", Opset: 13, Inputs: []Input{p("a", 5, 6)}, Build: withInts("Slice", "a", ints(i64(-4, 1), i64(100, -1), i64(0, 1), i64(1, 2)))},
		{Name: "Slice negative step", Opset: 13, Inputs: []Input{p("a", 3, 7)}, Build: withInts("Slice", "a", ints(i64(-1), i64(-100), i64(-1), i64(-2)))},
		{Name: "Slice default axes", Opset: 11, Inputs: []Input{p("a", 4, 5, 2)}, Build: withInts("Slice", "a", ints(i64(1, -3), i64(3, 9)))},
		{Name: "Slice run-time starts symbolic", Opset: 13, Symbolic: true, Inputs: []Input{p("a", 4, 5), ix("st", i64(2), 1, -2), ix("en", i64(2), 4, 100)}, Build: op("Slice", []string{"a", "st", "en"})},
		{Name: "Gather duplicate and negative indices", Opset: 16, Inputs: []Input{p("a", 4, 3), ix("i", i64(2, 2), 0, 2, 2, -1)}, Build: op("Gather", []string{"a", "i"})},
		{Name: "Gather axis 1 scalar index", Opset: 16, Inputs: []Input{p("a", 2, 3, 4), ix("i", nil, 1)}, Build: op("Gather", []string{"a", "i"}, graph.AttrI("axis", 1))},
		{Name: "Gather axis -1 1-D", Opset: 16, Symbolic: true, Inputs: []Input{p("a", 2, 4), ix("i", i64(3), 3, -1, 0)}, Build: op("Gather", []string{"a", "i"}, graph.AttrI("axis", -1))},
		{Name: "Gather opset 13 one-hot duplicates", Opset: 13, Inputs: []Input{p("a", 2, 4, 3), ix("i", i64(3, 1), 1, -3, 3)}, Build: op("Gather", []string{"a", "i"}, graph.AttrI("axis", 1))},
		{Name: "Gather opset 11 last axis scalar", Opset: 11, Inputs: []Input{p("a", 2, 4), ix("i", nil, -1)}, Build: op("Gather", []string{"a", "i"}, graph.AttrI("axis", 1))},
		{Name: "GatherElements one per row (select), negative index", Opset: 13, Inputs: []Input{p("a", 2, 3, 5), ix("i", i64(2, 3, 1), 4, -1, 0, 2, -5, 3)}, Build: op("GatherElements", []string{"a", "i"}, graph.AttrI("axis", 2))},
		{Name: "LogSoftmax then GatherElements one per row (scatter form)", Opset: 16, Inputs: []Input{p("a", 2, 3, 5), ix("i", i64(2, 3, 1), 4, -1, 0, 2, -5, 3)}, Build: logSoftmaxPick(-1)},
		{Name: "LogSoftmax then GatherElements, axes spelled differently", Opset: 16, Inputs: []Input{p("a", 2, 3, 5), ix("i", i64(2, 3, 1), 1, 2, 0, 3, 4, 0)}, Build: logSoftmaxPick(2)},
		{Name: "LogSoftmax then GatherElements opset 13 (dense form)", Opset: 13, Inputs: []Input{p("a", 2, 3, 5), ix("i", i64(2, 3, 1), 4, -1, 0, 2, -5, 3)}, Build: logSoftmaxPick(-1)},
		{Name: "Where(IsNaN(Softmax), 0, Softmax) pass-through", Opset: 13, Inputs: []Input{p("a", 2, 3, 4)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			y := b.Op("Softmax", "s", []*graph.Value{in["a"]}, graph.AttrI("axis", -1))
			nan := b.Op("IsNaN", "isnan", []*graph.Value{y})
			w := b.Op("Where", "w", []*graph.Value{nan, fconst(b, in["a"], nil, 0), y})
			return b.Op("Mul", "y", []*graph.Value{w, w}), nil
		}},
		{Name: "Where mask into Softmax (scores get gy unmasked)", Opset: 13, Inputs: []Input{{Name: "cond", Shape: []int64{3, 4}, Bool: causal(3, 4)}, p("a", 2, 3, 4), p("v", 2, 4, 5)}, Build: maskedAttention(false)},
		{Name: "Where mask, fill first, Cast into Softmax", Opset: 13, Inputs: []Input{{Name: "cond", Shape: []int64{3, 4}, Bool: causal(3, 4)}, p("a", 2, 3, 4), p("v", 2, 4, 5)}, Build: maskedAttention(true)},
		{Name: "Softmax into MatMul (attention row sums from go·o)", Opset: 13, Inputs: []Input{p("a", 2, 2, 3, 4), p("v", 2, 2, 4, 5)}, Build: attention(false)},
		{Name: "Softmax, NaN guard, MatMul (attention)", Opset: 13, Inputs: []Input{p("a", 2, 2, 3, 4), p("v", 2, 2, 4, 5)}, Build: attention(true)},
		{Name: "Softmax into MatMul, heads moved back (row sums from the transpose)", Opset: 13, Inputs: []Input{p("a", 2, 3, 4, 4), p("v", 2, 3, 4, 5)}, Build: attentionHeadsBack(0, 2, 1, 3)},
		{Name: "Softmax into MatMul, axes cycled before the last (row sums from the transpose)", Opset: 13, Inputs: []Input{p("a", 2, 3, 4, 4), p("v", 2, 3, 4, 5)}, Build: attentionHeadsBack(2, 0, 1, 3)},
		{Name: "Softmax into MatMul with a 2-D right operand", Opset: 13, Inputs: []Input{p("a", 2, 3, 4), p("v", 4, 5)}, Build: attention(false)},
		{Name: "Softmax broadcast into MatMul (dense row sums)", Opset: 13, Inputs: []Input{p("a", 1, 3, 4), p("v", 2, 4, 5)}, Build: attention(false)},
		{Name: "rotate_half: slices tiling an axis (gradients concatenated)", Opset: 13, Inputs: []Input{p("a", 2, 3, 6), x("c", 2, 3, 6)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			a := in["a"]
			lo := b.Op("Slice", "lo", []*graph.Value{a, b.Int64s("s0", i64(0)), b.Int64s("e0", i64(2)), b.Int64s("ax", i64(-1))})
			hi := b.Op("Slice", "hi", []*graph.Value{a, b.Int64s("s1", i64(2)), b.Int64s("e1", i64(6)), b.Int64s("ax", i64(-1))})
			rot := b.Op("Concat", "rot", []*graph.Value{b.Op("Neg", "neg", []*graph.Value{hi}), lo}, graph.AttrI("axis", -1))
			return b.Op("Add", "y", []*graph.Value{b.Op("Mul", "ac", []*graph.Value{a, in["c"]}), b.Op("Mul", "rc", []*graph.Value{rot, rot})}), nil
		}},
		{Name: "slices overlapping on an axis (gradients summed)", Opset: 13, Inputs: []Input{p("a", 2, 5)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			a := in["a"]
			lo := b.Op("Slice", "lo", []*graph.Value{a, b.Int64s("s0", i64(0)), b.Int64s("e0", i64(3)), b.Int64s("ax", i64(1))})
			hi := b.Op("Slice", "hi", []*graph.Value{a, b.Int64s("s1", i64(2)), b.Int64s("e1", i64(5)), b.Int64s("ax", i64(1))})
			return b.Op("Mul", "y", []*graph.Value{lo, hi}), nil
		}},
		{Name: "SiLU x·σ(x) (one rule; float32: in double ORT has no QuickGelu, which it fuses the pattern into)", DType: graph.Float, Inputs: []Input{p("a", 2, 5)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			s := b.Op("Sigmoid", "s", []*graph.Value{in["a"]})
			return b.Op("Mul", "y", []*graph.Value{s, in["a"]}), nil
		}},
		{Name: "SiLU with σ(x) read twice (separate rules)", Inputs: []Input{p("a", 2, 5)}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			s := b.Op("Sigmoid", "s", []*graph.Value{in["a"]})
			return b.Op("Add", "y", []*graph.Value{b.Op("Mul", "m", []*graph.Value{in["a"], s}), s}), nil
		}},
		{Name: "GatherElements duplicates", Opset: 16, Inputs: []Input{p("a", 3, 3), ix("i", i64(2, 3), 0, 0, -1, 2, 1, 0)}, Build: op("GatherElements", []string{"a", "i"}, graph.AttrI("axis", 1))},
		{Name: "GatherND duplicates", Opset: 16, Inputs: []Input{p("a", 3, 2, 4), ix("i", i64(3, 2), 0, 1, 0, 1, -1, 0)}, Build: op("GatherND", []string{"a", "i"})},
		{Name: "Tile", Opset: 13, Inputs: []Input{p("a", 2, 1, 3)}, Build: withInts("Tile", "a", ints(i64(2, 3, 1)))},
		{Name: "Pad crop and pad", Opset: 13, Inputs: []Input{p("a", 3, 4)}, Build: withInts("Pad", "a", ints(i64(1, -1, 2, 1)))},
		{Name: "Pad constant_value is a parameter", Opset: 13, Inputs: []Input{p("a", 2, 3), {Name: "v", Param: true, Float: []float64{0.7}}}, Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			return b.Op("Pad", "y", []*graph.Value{in["a"], b.Int64s("pads", i64(1, -1, 0, 2)), in["v"]}), nil
		}},
		{Name: "Pad opset 18 axes", Opset: 18, Inputs: []Input{p("a", 2, 3, 4)}, Build: withInts("Pad", "a", ints(i64(1, 2), nil, i64(-1)))},
		{Name: "Pad opset 10 attributes", Opset: 10, Inputs: []Input{p("a", 3, 4)}, Build: op("Pad", []string{"a"}, graph.AttrIs("pads", 0, 1, 2, 0))},
		{Name: "CumSum", Opset: 14, Inputs: []Input{p("a", 3, 4)}, Build: withInts("CumSum", "a", ints(i64(1)))},
		{Name: "CumSum exclusive reverse", Opset: 14, Inputs: []Input{p("a", 3, 4)}, Build: withInts("CumSum", "a", ints(i64(0)), graph.AttrI("exclusive", 1), graph.AttrI("reverse", 1))},
		{Name: "Dropout inference", Opset: 13, Inputs: []Input{p("a", 2, 3)}, Build: op("Dropout", []string{"a"})},
		{Name: "Trilu", Opset: 14, Inputs: []Input{p("a", 2, 4, 4)}, Build: op("Trilu", []string{"a"}, graph.AttrI("upper", 0))},
	}
}

// TestGradientRules checks every case in float64 (ORT runs these ops in
// double) to 1e-6 relative.
func TestGradientRules(t *testing.T) {
	runCases(t, cases())
}

// runCases checks each case against central differences: float64 ones
// to 1e-6 relative, float32 ones to 2e-3; and that the rules build no
// backward node nothing reads.
func runCases(t *testing.T, cs []Case) {
	env := openEnv(t)
	for _, c := range cs {
		t.Run(c.Name, func(t *testing.T) {
			res, err := Check(env, c, t.TempDir())
			if err != nil {
				t.Fatalf("%v\n%s", err, res.Graph)
			}
			tol := 1e-6
			if c.DType == graph.Float {
				tol = 2e-3
			}
			t.Logf("analytic %.10g, numeric %.10g, relative error %.3g", res.Analytic, res.Numeric, res.RelErr)
			if len(res.Dead) > 0 {
				t.Errorf("backward nodes nothing reads: %v", res.Dead)
			}
			if !(res.RelErr <= tol) { // NaN fails too
				t.Errorf("analytic %.10g, numeric %.10g, relative error %.3g > %g\n%s", res.Analytic, res.Numeric, res.RelErr, tol, res.Graph)
			}
		})
	}
}
