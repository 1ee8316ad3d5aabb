package testmodels

import (
	"math"
	"strings"

	"github.com/loracc/loracc/graph"
)

// Transformer block dimensions.
const (
	dModel = 32
	nHeads = 4
	dHead  = dModel / nHeads
	dMLP   = 64
)

// TransformerBlock is one pre-LN transformer block with dynamic batch and
// sequence length, x and y float32 [batch, seq, 32]:
//
//	h = x + o_proj(attention(ln1(x)))      4 heads of 8
//	y = h + mlp.fc2(gelu(mlp.fc1(ln2(h))))  hidden 64, erf GELU
//
// Projections are MatMul + Add with initializers named like PyTorch's
// ("attn.q_proj.weight", stored [in, out]). Head splitting uses Reshape with
// shape constants holding 0 (copy the dim) and -1 (infer it), so nothing is
// tied to a fixed batch or sequence length. Attention has the two
// activation × activation MatMuls (q·kᵀ and probs·v) that LoRA must leave
// alone, and GELU is spelled out (Div, Erf, Add, Mul, Mul) as exporters
// before opset 20 write it.
func TransformerBlock() (*graph.Model, error) {
	m := newModel("transformer_block")
	g := m.Graph
	c := consts{b: &graph.Builder{G: g}}
	ln1w := c.add(uniform("ln1.weight", graph.Float, []int64{dModel}, 0.9, 1.1))
	ln1b := c.add(uniform("ln1.bias", graph.Float, []int64{dModel}, -0.1, 0.1))
	var proj [4][2]*graph.Value // q, k, v, o: weight, bias
	for i, p := range []string{"q_proj", "k_proj", "v_proj", "o_proj"} {
		proj[i][0] = c.add(weight("attn."+p+".weight", graph.Float, dModel, dModel))
		proj[i][1] = c.add(weight("attn."+p+".bias", graph.Float, dModel))
	}
	ln2w := c.add(uniform("ln2.weight", graph.Float, []int64{dModel}, 0.9, 1.1))
	ln2b := c.add(uniform("ln2.bias", graph.Float, []int64{dModel}, -0.1, 0.1))
	fc1w := c.add(weight("mlp.fc1.weight", graph.Float, dModel, dMLP))
	fc1b := c.add(weight("mlp.fc1.bias", graph.Float, dMLP))
	fc2w := c.add(weight("mlp.fc2.weight", graph.Float, dMLP, dModel))
	fc2b := c.add(weight("mlp.fc2.bias", graph.Float, dModel))
	cb := c.b
	headsShape := cb.Int64s("attn.heads_shape", []int64{0, 0, nHeads, dHead})
	mergeShape := cb.Int64s("attn.merge_shape", []int64{0, 0, -1})
	scale := c.add(graph.NewFloatTensor("attn.scale", graph.Float, nil, []float32{float32(1 / math.Sqrt(dHead))}))
	sqrt2 := c.add(graph.NewFloatTensor("mlp.sqrt2", graph.Float, nil, []float32{math.Sqrt2}))
	one := c.add(graph.NewFloatTensor("mlp.one", graph.Float, nil, []float32{1}))
	half := c.add(graph.NewFloatTensor("mlp.half", graph.Float, nil, []float32{0.5}))
	if c.err != nil {
		return nil, c.err
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, seq, fixed(dModel)))

	layerNorm := func(prefix string, in, w, bias *graph.Value) *graph.Value {
		b := &graph.Builder{G: g, Prefix: prefix}
		return b.Op("LayerNormalization", prefix+".out", []*graph.Value{in, w, bias},
			graph.AttrI("axis", -1), graph.AttrF("epsilon", 1e-5))
	}
	linear := func(prefix string, in, w, bias *graph.Value) *graph.Value {
		b := &graph.Builder{G: g, Prefix: prefix}
		name := strings.ReplaceAll(prefix, "/", ".")
		h := b.Op("MatMul", name+".matmul", []*graph.Value{in, w})
		return b.Op("Add", name+".out", []*graph.Value{h, bias})
	}

	// Attention. Heads are laid out [batch, heads, seq, dHead]; k goes
	// straight to [batch, heads, dHead, seq] for the score MatMul.
	h := layerNorm("ln1", x, ln1w, ln1b)
	attn := &graph.Builder{G: g, Prefix: "attn"}
	heads := func(name string, v *graph.Value, perm ...int64) *graph.Value {
		r := attn.Op("Reshape", name+".heads", []*graph.Value{v, headsShape})
		return attn.Op("Transpose", name+".t", []*graph.Value{r}, graph.AttrIs("perm", perm...))
	}
	q := heads("attn.q", linear("attn/q_proj", h, proj[0][0], proj[0][1]), 0, 2, 1, 3)
	k := heads("attn.k", linear("attn/k_proj", h, proj[1][0], proj[1][1]), 0, 2, 3, 1)
	v := heads("attn.v", linear("attn/v_proj", h, proj[2][0], proj[2][1]), 0, 2, 1, 3)
	s := attn.Op("MatMul", "attn.scores", []*graph.Value{q, k})
	s = attn.Op("Mul", "attn.scaled", []*graph.Value{s, scale})
	p := attn.Op("Softmax", "attn.probs", []*graph.Value{s}, graph.AttrI("axis", -1))
	a := attn.Op("MatMul", "attn.context", []*graph.Value{p, v})
	a = attn.Op("Transpose", "attn.context.t", []*graph.Value{a}, graph.AttrIs("perm", 0, 2, 1, 3))
	a = attn.Op("Reshape", "attn.merged", []*graph.Value{a, mergeShape})
	a = linear("attn/o_proj", a, proj[3][0], proj[3][1])
	res := &graph.Builder{G: g, Prefix: "residual"}
	h1 := res.Op("Add", "attn.residual", []*graph.Value{x, a})

	// MLP with erf GELU: gelu(u) = u · (erf(u/√2) + 1) · 0.5.
	u := linear("mlp/fc1", layerNorm("ln2", h1, ln2w, ln2b), fc1w, fc1b)
	gelu := &graph.Builder{G: g, Prefix: "mlp/gelu"}
	e := gelu.Op("Div", "mlp.gelu.div", []*graph.Value{u, sqrt2})
	e = gelu.Op("Erf", "mlp.gelu.erf", []*graph.Value{e})
	e = gelu.Op("Add", "mlp.gelu.add", []*graph.Value{e, one})
	e = gelu.Op("Mul", "mlp.gelu.mul", []*graph.Value{u, e})
	e = gelu.Op("Mul", "mlp.gelu.out", []*graph.Value{e, half})
	o := linear("mlp/fc2", e, fc2w, fc2b)
	y := res.Op("Add", "y", []*graph.Value{h1, o})
	y.Type = tensorType(graph.Float, batch, seq, fixed(dModel))
	g.AddOutput(y)
	return m, nil
}
