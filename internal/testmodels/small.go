package testmodels

import "github.com/loracc/loracc/graph"

// Seed is the seed example: y = x · seed.weight with
// seed.weight = [[1,2,3,4],[5,6,7,8],…,[17,18,19,20]] (shape [5,4]), so
// x = [[1,0,0,0,0]] gives y = [[1,2,3,4]] exactly. The LoRA target name is
// "seed".
func Seed() (*graph.Model, error) {
	m := newModel("seed")
	g := m.Graph
	b := &graph.Builder{G: g, Prefix: "seed"}
	w := make([]float32, 20)
	for i := range w {
		w[i] = float32(i + 1)
	}
	wt, err := graph.NewFloatTensor("seed.weight", graph.Float, []int64{5, 4}, w)
	if err != nil {
		return nil, err
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(5)))
	y := b.Op("MatMul", "y", []*graph.Value{x, b.Const(wt)})
	y.Type = tensorType(graph.Float, batch, fixed(4))
	g.AddOutput(y)
	return m, nil
}

// MLPGemm is a three-layer perceptron of Gemm nodes covering the Gemm
// attribute cases a LoRA rewrite must honour:
//
//	fc1: Gemm(x, W[32,16], b[32], transB=1, alpha=1, beta=1) → Relu
//	fc2: Gemm(h, W[8,32], b[8], transB=1, alpha=0.5, beta=2)
//	fc3: Gemm(h, W[8,4], transB=0, no C)
//
// x is float32 [batch, 16], y is float32 [batch, 4].
func MLPGemm() (*graph.Model, error) {
	m := newModel("mlp_gemm")
	g := m.Graph
	c := consts{b: &graph.Builder{G: g}}
	w1 := c.add(weight("fc1.weight", graph.Float, 32, 16))
	b1 := c.add(weight("fc1.bias", graph.Float, 32))
	w2 := c.add(weight("fc2.weight", graph.Float, 8, 32))
	b2 := c.add(weight("fc2.bias", graph.Float, 8))
	w3 := c.add(weight("fc3.weight", graph.Float, 8, 4))
	if c.err != nil {
		return nil, c.err
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(16)))

	fc1 := &graph.Builder{G: g, Prefix: "fc1"}
	h := fc1.Op("Gemm", "fc1.out", []*graph.Value{x, w1, b1},
		graph.AttrF("alpha", 1), graph.AttrF("beta", 1), graph.AttrI("transB", 1))
	h = fc1.Op("Relu", "fc1.relu", []*graph.Value{h})

	fc2 := &graph.Builder{G: g, Prefix: "fc2"}
	h = fc2.Op("Gemm", "fc2.out", []*graph.Value{h, w2, b2},
		graph.AttrF("alpha", 0.5), graph.AttrF("beta", 2), graph.AttrI("transB", 1))

	fc3 := &graph.Builder{G: g, Prefix: "fc3"}
	y := fc3.Op("Gemm", "y", []*graph.Value{h, w3}, graph.AttrI("transB", 0))
	y.Type = tensorType(graph.Float, batch, fixed(4))
	g.AddOutput(y)
	return m, nil
}

// ConstantWeight mimics a Paddle export, whose weights are Constant nodes
// rather than initializers: y = x · linear_0.w_0 + linear_0.b_0, with x
// float32 [batch, 6], the weight a Constant [6,3] whose output is named
// "linear_0.w_0" and the bias a Constant [3] named "linear_0.b_0".
func ConstantWeight() (*graph.Model, error) {
	m := newModel("constant_weight")
	g := m.Graph
	w, err := weight("linear_0.w_0", graph.Float, 6, 3)
	if err != nil {
		return nil, err
	}
	bias, err := weight("linear_0.b_0", graph.Float, 3)
	if err != nil {
		return nil, err
	}
	// Paddle leaves the attribute tensors unnamed; the Constant's output
	// carries the name.
	w.Name, bias.Name = "", ""
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(6)))
	b := &graph.Builder{G: g, Prefix: "linear_0"}
	wv := b.Op("Constant", "linear_0.w_0", nil, graph.AttrT("value", w))
	bv := b.Op("Constant", "linear_0.b_0", nil, graph.AttrT("value", bias))
	h := b.Op("MatMul", "linear_0.tmp_0", []*graph.Value{x, wv})
	y := b.Op("Add", "y", []*graph.Value{h, bv})
	y.Type = tensorType(graph.Float, batch, fixed(3))
	g.AddOutput(y)
	return m, nil
}

// FP16MLP is one fp16 MatMul: x float16 [batch, 8] · fp16.weight [8,8] → y
// float16 [batch, 8], for checking that adapters keep the base dtype.
func FP16MLP() (*graph.Model, error) {
	m := newModel("fp16_mlp")
	g := m.Graph
	w, err := weight("fp16.weight", graph.Float16, 8, 8)
	if err != nil {
		return nil, err
	}
	b := &graph.Builder{G: g, Prefix: "fp16"}
	x := g.AddInput("x", tensorType(graph.Float16, batch, fixed(8)))
	y := b.Op("MatMul", "y", []*graph.Value{x, b.Const(w)})
	y.Type = tensorType(graph.Float16, batch, fixed(8))
	g.AddOutput(y)
	return m, nil
}

// BF16MatMul is one bf16 MatMul between fp32 casts:
// y = Cast<fp32>(Cast<bf16>(x) · bf16.weight), x and y float32 [batch, 8],
// bf16.weight bfloat16 [8,8]. The casts keep the graph interface fp32 so
// callers need no bf16 buffers; whether a runtime has a bf16 MatMul kernel
// is its own question (ORT's CPU provider may not).
func BF16MatMul() (*graph.Model, error) {
	m := newModel("bf16_matmul")
	g := m.Graph
	w, err := weight("bf16.weight", graph.BFloat16, 8, 8)
	if err != nil {
		return nil, err
	}
	b := &graph.Builder{G: g, Prefix: "bf16"}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(8)))
	xb := b.Op("Cast", "x.bf16", []*graph.Value{x}, graph.AttrI("to", int64(graph.BFloat16)))
	h := b.Op("MatMul", "bf16.out", []*graph.Value{xb, b.Const(w)})
	y := b.Op("Cast", "y", []*graph.Value{h}, graph.AttrI("to", int64(graph.Float)))
	y.Type = tensorType(graph.Float, batch, fixed(8))
	g.AddOutput(y)
	return m, nil
}
