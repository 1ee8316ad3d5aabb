package autodiff

import (
	"slices"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestGradientsLeaveTheForwardGraphAlone: Gradients only adds nodes and
// initializers. Each case builds a small forward graph whose attributes
// or constant inputs a rule reads and might be tempted to normalise
// (negative axes, default perms, pads), prints it, differentiates it, takes
// the added nodes and initializers out again and prints it once more: the
// two prints must agree — every original node with the same inputs and
// attributes, every original value with the same type.
func TestGradientsLeaveTheForwardGraphAlone(t *testing.T) {
	f := func(dims ...int64) []int64 { return dims }
	cases := []struct {
		name  string
		opset int64
		x     []int64
		build func(b *graph.Builder, x *graph.Value) *graph.Value
	}{
		{"ReduceMean axes attribute [-1] keepdims 0", 11, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			return b.Op("ReduceMean", "y", vals(x), graph.AttrIs("axes", -1), graph.AttrI("keepdims", 0))
		}},
		{"ReduceSum axes input [-1, 0] keepdims 0", 13, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			return b.Op("ReduceSum", "y", vals(x, b.Int64s("axes", f(-1, 0))), graph.AttrI("keepdims", 0))
		}},
		{"ReduceMean axes input [-2] opset 18", 18, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			return b.Op("ReduceMean", "y", vals(x, b.Int64s("axes", f(-2))))
		}},
		{"Softmax axis -1", 13, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			return b.Op("Softmax", "y", vals(x), graph.AttrI("axis", -1))
		}},
		{"LogSoftmax opset 11 axis -2", 11, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			return b.Op("LogSoftmax", "y", vals(x), graph.AttrI("axis", -2))
		}},
		{"LayerNormalization axis -2", 17, f(2, 3, 4), func(b *graph.Builder, x *graph.Value) *graph.Value {
			s := b.Const(floats(f(3, 4)))
			return b.Op("LayerNormalization", "y", vals(x, s), graph.AttrI("axis", -2))
		}},
		{"Transpose default perm, Concat axis -1", 13, f(2, 3), func(b *graph.Builder, x *graph.Value) *graph.Value {
			tx := b.Op("Transpose", "t", vals(x))
			return b.Op("Concat", "y", vals(tx, tx), graph.AttrI("axis", -1))
		}},
		{"Gather axis -1, Squeeze axes [-1]", 11, f(2, 4, 1), func(b *graph.Builder, x *graph.Value) *graph.Value {
			sq := b.Op("Squeeze", "s", vals(x), graph.AttrIs("axes", -1))
			return b.Op("Gather", "y", vals(sq, b.Int64s("i", f(3, -1))), graph.AttrI("axis", -1))
		}},
		{"Slice negative starts and axes, Unsqueeze [-1]", 13, f(4, 5), func(b *graph.Builder, x *graph.Value) *graph.Value {
			s := b.Op("Slice", "s", vals(x, b.Int64s("st", f(-3)), b.Int64s("en", f(100)), b.Int64s("ax", f(-1))))
			return b.Op("Unsqueeze", "y", vals(s, b.Int64s("ua", f(-1))))
		}},
		{"Slice opset 9 attributes, Pad opset 10 negative pads", 9, f(4, 5), func(b *graph.Builder, x *graph.Value) *graph.Value {
			s := b.Op("Slice", "s", vals(x), graph.AttrIs("starts", -3, 1), graph.AttrIs("ends", 100, -1))
			return b.Op("Pad", "y", vals(s), graph.AttrIs("pads", 1, -1, 0, 2))
		}},
		{"Conv SAME_UPPER stride 2", 13, f(1, 2, 5, 5), func(b *graph.Builder, x *graph.Value) *graph.Value {
			w := b.Const(floats(f(3, 2, 3, 3)))
			return b.Op("Conv", "y", vals(x, w), graph.AttrIs("strides", 2, 2), graph.AttrS("auto_pad", "SAME_UPPER"))
		}},
		{"Gemm transB alpha beta, Clip", 13, f(2, 3), func(b *graph.Builder, x *graph.Value) *graph.Value {
			g := b.Op("Gemm", "g", vals(x, b.Const(floats(f(4, 3))), b.Const(floats(f(4)))), graph.AttrI("transB", 1), graph.AttrF("alpha", 0.5), graph.AttrF("beta", 2))
			return b.Op("Clip", "y", vals(g, b.Const(floats(nil)), nil))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := graph.NewModel(tc.opset)
			g := m.Graph
			dims := make([]graph.Dim, len(tc.x))
			for i, d := range tc.x {
				dims[i] = graph.Dim{Value: d}
			}
			x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: dims})
			b := &graph.Builder{G: g, Prefix: "fwd"}
			y := tc.build(b, x)
			loss := b.Op("ReduceSum", "loss", vals(y), graph.AttrI("keepdims", 0))
			g.AddOutput(loss)
			before := graph.Format(m)
			nodes := slices.Clone(g.Nodes)
			inits := slices.Clone(g.Initializers)
			grads, err := Gradients(m, loss, vals(x))
			if err != nil || grads[0] == nil {
				t.Fatalf("grads %v, err %v", grads, err)
			}
			for i := len(g.Nodes) - 1; i >= 0; i-- {
				if n := g.Nodes[i]; !slices.Contains(nodes, n) {
					if err := g.RemoveNode(n); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, v := range slices.Clone(g.Initializers) {
				if !slices.Contains(inits, v) {
					if err := g.RemoveInitializer(v); err != nil {
						t.Fatal(err)
					}
				}
			}
			if after := graph.Format(m); after != before {
				t.Errorf("the forward graph changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// floats is a float32 tensor of the given shape (nil: a scalar) filled
// with 0.5.
func floats(dims []int64) *graph.Tensor {
	n := 1
	for _, d := range dims {
		n *= int(d)
	}
	xs := make([]float32, n)
	for i := range xs {
		xs[i] = 0.5
	}
	t, err := graph.NewFloatTensor("k", graph.Float, dims, xs)
	if err != nil {
		panic(err)
	}
	return t
}
