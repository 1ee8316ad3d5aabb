package autodiff

import (
	"errors"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// TestMissingRulesNamedTogether: every op without a rule between the
// parameters and the loss is reported in one error, with its node name.
func TestMissingRulesNamedTogether(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 3}}})
	b := &graph.Builder{G: g}
	h := b.Op("Hardmax", "h", []*graph.Value{a})
	h.Producer()
	custom := (&graph.Builder{G: g, Prefix: "ext", Domain: "com.example"}).Op("Frobnicate", "f", []*graph.Value{a})
	sum := b.Op("Add", "s", []*graph.Value{h, custom})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{sum}, graph.AttrI("keepdims", 0))
	_, err := Gradients(m, loss, []*graph.Value{a})
	if !errors.Is(err, ErrMissingRules) {
		t.Fatalf("err = %v, want ErrMissingRules", err)
	}
	hn, _ := h.Producer()
	fn, _ := custom.Producer()
	for _, want := range []string{`Hardmax (node "` + hn.Name + `")`, `com.example::Frobnicate (node "` + fn.Name + `")`, "2 ops"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestNonDifferentiableOpsNeedNoRule: a path through a nil rule (Sign)
// contributes nothing and is not an error.
func TestNonDifferentiableOpsNeedNoRule(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 3}}})
	b := &graph.Builder{G: g}
	y := b.Op("Mul", "y", []*graph.Value{a, b.Op("Sign", "s", []*graph.Value{a})})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{y}, graph.AttrI("keepdims", 0))
	grads, err := Gradients(m, loss, []*graph.Value{a})
	if err != nil || grads[0] == nil {
		t.Fatalf("grads %v, err %v", grads, err)
	}
}

// TestRuleResultContract: a rule that gives fewer or more gradients than
// its node has inputs, or none for a wanted input, is an error naming the
// node, not a panic or a silently dropped gradient.
func TestRuleResultContract(t *testing.T) {
	for _, tc := range []struct {
		name string
		grad gradRule
		want string
	}{
		{"too few", func(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value { return vals(gys[0]) }, "gives 1 gradients for 2 inputs"},
		{"too many", func(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value { return vals(gys[0], gys[0], nil) }, "gives 3 gradients for 2 inputs"},
		{"nil for a wanted input", func(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value { return vals(gys[0], nil) }, `no gradient for input 1 ("b")`},
		{"sticky error", func(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
			return vals(c.Add(gys[0], c.swapLast(n.Input(1))), nil) // b has rank 1
		}, "MatMul gradients need rank ≥ 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := graph.NewModel(17)
			g := m.Graph
			shape := &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 3}}}
			a, b := g.AddInput("a", shape), g.AddInput("b", shape)
			y := (&graph.Builder{G: g}).Op("Add", "y", vals(a, b))
			n, _ := y.Producer()
			c := &gradCtx{Builder: opb.New(m, "grad", "grad", infer.New()), want: map[*graph.Value]bool{a: true, b: true}, node: n}
			_, err := c.apply(rule{grad: tc.grad}, n, vals(y))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestAttentionSoftmaxRowSums: with p = Softmax(a) feeding only
// o = MatMul(p, v), the backward reads p once (dx = p·(gy − s)); the row
// sums s come from go ⊙ o, not from another attention-sized product.
// The dense form reads p twice.
func TestAttentionSoftmaxRowSums(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vdims []graph.Dim
		reads int
	}{
		{"attention", []graph.Dim{{Value: 2}, {Value: 4}, {Value: 5}}, 1},
		{"softmax broadcast by the product", []graph.Dim{{Value: 3}, {Value: 2}, {Value: 4}, {Value: 5}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := graph.NewModel(17)
			g := m.Graph
			a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 3}, {Value: 4}}})
			v := g.AddInput("v", &graph.TensorType{DType: graph.Float, Shape: tc.vdims})
			b := &graph.Builder{G: g}
			p := b.Op("Softmax", "p", []*graph.Value{a}, graph.AttrI("axis", -1))
			o := b.Op("MatMul", "o", []*graph.Value{p, v})
			loss := b.Op("ReduceSum", "loss", []*graph.Value{b.Op("Mul", "sq", []*graph.Value{o, o})}, graph.AttrI("keepdims", 0))
			if _, err := Gradients(m, loss, []*graph.Value{a, v}); err != nil {
				t.Fatal(err)
			}
			reads := 0
			for _, u := range p.Uses() {
				if u.Node.Op == "Mul" {
					reads++
				}
			}
			if reads != tc.reads {
				t.Errorf("the backward multiplies by p %d times, want %d", reads, tc.reads)
			}
		})
	}
}

// TestSlicesTilingAnAxisConcatenate: the gradients of x[..., :2] and
// x[..., 2:] (rotate_half in rotary embeddings) reach x as one Concat, not
// as two padded tensors and their sum.
func TestSlicesTilingAnAxisConcatenate(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 6}}})
	b := &graph.Builder{G: g}
	lo := b.Op("Slice", "lo", []*graph.Value{a, b.Int64s("s0", []int64{0}), b.Int64s("e0", []int64{2}), b.Int64s("ax", []int64{-1})})
	hi := b.Op("Slice", "hi", []*graph.Value{a, b.Int64s("s1", []int64{2}), b.Int64s("e1", []int64{6}), b.Int64s("ax", []int64{-1})})
	rot := b.Op("Concat", "rot", []*graph.Value{b.Op("Neg", "neg", []*graph.Value{hi}), lo}, graph.AttrI("axis", -1))
	y := b.Op("Add", "y", []*graph.Value{b.Op("Mul", "aa", []*graph.Value{a, a}), b.Op("Mul", "rr", []*graph.Value{rot, rot})})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{y}, graph.AttrI("keepdims", 0))
	if _, err := Gradients(m, loss, []*graph.Value{a}); err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	for _, n := range g.Nodes {
		ops[n.Op]++
	}
	if ops["Pad"] != 0 || ops["Concat"] != 2 {
		t.Errorf("backward has %d Pad and %d Concat nodes (with the forward's), want 0 and 2", ops["Pad"], ops["Concat"])
	}
}

// TestSiLUOneRule: x·σ(x) gets its derivative from one formula, σ + y·(1 −
// σ): no Sum of two gradients of x, σ(x)'s own rule (a second Mul by σ)
// is not run, and the backward does not read x (it keeps σ and y).
func TestSiLUOneRule(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 3}}})
	b := &graph.Builder{G: g}
	y := b.Op("Mul", "y", []*graph.Value{x, b.Op("Sigmoid", "s", []*graph.Value{x})})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{y}, graph.AttrI("keepdims", 0))
	forward := len(g.Nodes)
	if _, err := Gradients(m, loss, []*graph.Value{x}); err != nil {
		t.Fatal(err)
	}
	ops := map[string]int{}
	for _, n := range g.Nodes[forward:] {
		ops[n.Op]++
		for _, in := range n.Inputs() {
			if in == x {
				t.Errorf("backward node %s (%s) reads x", n.Name, n.Op)
			}
		}
	}
	// Mul and Add: two and one of the formula, one each of the seed 1 + 0·loss.
	if ops["Sum"] != 0 || ops["Mul"] != 3 || ops["Add"] != 2 || ops["Sub"] != 1 {
		t.Errorf("backward ops %v, want 3 Mul, 2 Add, 1 Sub, no Sum", ops)
	}
}

// TestNarrowWeightGradTransposed: the gradient of a matrix b [k, n] in
// a·b is (gyᵀ·a)ᵀ, a MatMul between two Transposes, when n < k (a LoRA
// A, n the rank), and one Gemm with transA (aᵀ·gy) otherwise; batched
// rows are flattened either way.
func TestNarrowWeightGradTransposed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		a      []int64
		k, n   int64
		narrow bool
	}{
		{"narrow", []int64{5, 6}, 6, 2, true},
		{"narrow batched", []int64{2, 5, 6}, 6, 2, true},
		{"wide", []int64{5, 2}, 2, 6, false},
		{"square", []int64{2, 5, 4}, 4, 4, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := graph.NewModel(17)
			g := m.Graph
			dims := func(ds ...int64) *graph.TensorType {
				tt := &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
				for _, d := range ds {
					tt.Shape = append(tt.Shape, graph.Dim{Value: d})
				}
				return tt
			}
			a := g.AddInput("a", dims(tc.a...))
			w := g.AddInput("w", dims(tc.k, tc.n))
			b := &graph.Builder{G: g}
			y := b.Op("MatMul", "y", []*graph.Value{a, w})
			loss := b.Op("ReduceSum", "loss", []*graph.Value{b.Op("Mul", "sq", []*graph.Value{y, y})}, graph.AttrI("keepdims", 0))
			grads, err := Gradients(m, loss, []*graph.Value{w})
			if err != nil {
				t.Fatal(err)
			}
			// The ops from the gradient back to its flattened or given
			// operands: at most three, Identity naming the gradient skipped.
			var chain []string
			for v := grads[0]; v != nil && len(chain) < 3; {
				n, _ := v.Producer()
				if n == nil || n.Op == "Reshape" || n.Op == "Sum" || n.Op == "Mul" {
					break
				}
				if n.Op != "Identity" {
					chain = append(chain, n.Op)
				}
				v = n.Input(0)
			}
			got, want := strings.Join(chain, " ← "), "Gemm"
			if tc.narrow {
				want = "Transpose ← MatMul ← Transpose"
			}
			if got != want {
				t.Errorf("w's gradient is %s, want %s", got, want)
			}
		})
	}
}
