package trainstep

// Pass "canonicalize".
//
// Pre:  none (runs on the forward graph, before loss and autodiff).
// Post: op patterns exporters spell out are replaced by the standard op
//       that computes them, where the model's opset has it:
//   tanh-GELU — 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), as Hugging
//       Face's GPT-2 (NewGELUActivation) exports it in eight nodes, becomes
//       Gelu(x, approximate="tanh") (opset 20);
//   a projection to a wide output that is a graph output (the logits of a
//       language model: x·W with W constant, N ≥ 4096 not a multiple of 8,
//       as GPT-2's 50257) reads W padded with zero columns to a multiple
//       of 8 and is sliced back; the lm loss reads the wide product
//       itself, its padding masked by a Gemm bias (lmLogits), so no copy
//       is added;
//   a LoRA branch's scale, Mul(x·A·B, k) with k a constant scalar and B
//       a parameter, is dropped where k = 1 and otherwise multiplies B
//       ([r, out]) instead of the product ([tokens, out]): one
//       activation-sized kernel less per target, forward and backward
//       (where k is not a power of two the product rounds differently, by
//       a float32 ulp);
//   RMS normalization, w·(x·1/√(mean(x², last axis) + ε)) as torch.onnx
//       writes Llama's RMSNorm (Pow, ReduceMean, Add, Sqrt, Reciprocal,
//       Mul, Mul), becomes ONNX Runtime's SimplifiedLayerNormalization
//       (the node its own optimizer fuses the pattern into) with its
//       InvStdVar output, read by the gradient rule: one kernel forward
//       instead of seven, and a short backward;
//   a product of two scaled operands, MatMul(a·c₁, b·c₂) with c₁, c₂
//       constant scalars (torch.onnx scales both q and kᵀ by
//       √(1/√d)), becomes MatMul(a·(c₁c₂), b): one Mul forward and one
//       backward less per attention; exact where c₁c₂ and the dropped
//       c₂ are powers of two (head size 64: c₁c₂ = 1/8), otherwise
//       rounded once instead of twice;
//   attention's NaN guard, o = MatMul(Where(IsNaN(p), 0, p), V) with
//       p = Softmax(x), as torch.onnx writes scaled_dot_product_attention,
//       becomes Where(IsNaN(o), 0, o) with o = MatMul(p, V): the guard
//       reads and writes [.., T, D] instead of [.., T, T] (16× less for a
//       512-token, 32-head Llama). A softmax row has a NaN only as a
//       whole, and then o's row is NaN, so with V finite the values are
//       the same; a NaN or ∞ in V itself, which the original propagates,
//       is zeroed too;
//   LoRA branches reading the same input share one x·[A₁ | A₂ | …]
//       product (lorafuse.go);
//   LayerNormalization with only its output Y gets its optional outputs
//       Mean and InvStdDev, which the gradient rule then reads instead of
//       recomputing the statistics (six nodes per normalization).
//
// Why (padding): cuBLAS runs its fast tensor-core kernels only on
// matrices whose rows are 16-byte aligned; with N = 50257 the logits GEMM
// and its gradient fall back to unaligned kernels, 6.5 ms of GPT-2 small's
// 43 ms step on an H200.
//
// Why (GELU): in an inference graph ONNX Runtime fuses the pattern into one
// kernel itself, but in a training graph the backward reads the pattern's
// intermediate values, so the fusion cannot fire: every one of them is a
// kernel and a kept activation (for GPT-2 small, eight [8, 512, 3072]
// tensors per layer). As one Gelu node the forward is one kernel and the
// backward is one rule that reads x alone.

import (
	"math"

	"github.com/loracc/loracc/graph"
)

// Canonicalize is pass "canonicalize".
func (st *Compiler) Canonicalize(m *graph.Model) error {
	g := m.Graph
	if _, err := st.dropKVCache(m); err != nil {
		return err
	}
	if k, err := Decompose(m); err != nil {
		return err
	} else if k > 0 {
		st.logf("canonicalize: %d contrib nodes (GroupQueryAttention, RotaryEmbedding, MultiHeadAttention, Attention, GatherBlockQuantized) decomposed into standard ops (contrib.go, mha.go, attention.go, gbq.go)", k)
		if err := g.SortTopo(); err != nil {
			return err
		}
	}
	if err := padWideOutputs(m); err != nil {
		return err
	}
	for _, rw := range []struct {
		name string
		run  func() (int, error)
		note string
	}{
		{"rms-norm", func() (int, error) { return fuseRMSNorms(m) }, "%d RMS normalizations became SimplifiedLayerNormalization"},
		{"product-scales", func() (int, error) { return mergeProductScales(g) }, "%d products scaled on both operands now scale one"},
		{"attention-guard", func() (int, error) { return moveAttentionGuards(g) }, "%d attention NaN guards moved from the probabilities to the attention output"},
		{"branch-scales", func() (int, error) { return st.foldBranchScales(g) }, "%d adapter scales moved onto lora_B (or dropped, where 1)"},
		{"lora-concat", func() (int, error) { return st.fuseSharedInputBranches(m) }, "%d LoRA x·A products merged into their neighbours' (shared input, lorafuse.go)"},
	} {
		if !st.enabled(rw.name) {
			continue
		}
		k, err := rw.run()
		if err != nil {
			return err
		}
		if k > 0 {
			st.logf("canonicalize: "+rw.note, k)
			if err := g.SortTopo(); err != nil {
				return err
			}
		}
	}
	stats := 0
	for _, node := range g.Nodes {
		if node.Op == "LayerNormalization" && node.Domain == "" && len(node.Outputs()) == 1 {
			y := node.Output(0)
			node.AddOutput(y.Name + ".mean")
			node.AddOutput(y.Name + ".inv_std_dev")
			stats++
		}
	}
	if stats > 0 {
		st.logf("canonicalize: %d LayerNormalizations output their statistics for the backward", stats)
	}
	if m.OpsetVersion("") < 20 {
		return nil // Gelu is an ONNX op from opset 20
	}
	n := 0
	for _, node := range append([]*graph.Node(nil), g.Nodes...) {
		if node.Graph() == nil {
			continue // removed as part of an earlier match
		}
		x, inner, ok := tanhGelu(node)
		if !ok {
			continue
		}
		y := node.Output(0)
		b := &graph.Builder{G: g, Prefix: "canonical", Metadata: node.Metadata}
		gelu := b.Op("Gelu", y.Name+".gelu", []*graph.Value{x}, graph.AttrS("approximate", "tanh"))
		name, typ, doc, meta := y.Name, y.Type, y.DocString, y.Metadata
		y.ReplaceAllUsesWith(gelu)
		for i, o := range g.Outputs {
			if o == y {
				g.Outputs[i] = gelu
			}
		}
		for _, dead := range append([]*graph.Node{node}, inner...) { // readers first
			if err := g.RemoveNode(dead); err != nil {
				return err
			}
		}
		if err := gelu.Rename(name); err != nil {
			return err
		}
		gelu.Type, gelu.DocString, gelu.Metadata = typ, doc, meta
		p, _ := gelu.Producer()
		g.PlaceAfter(producerOrNil(x), p)
		n++
	}
	if n > 0 {
		st.logf("canonicalize: %d tanh-GELU patterns became Gelu(approximate=tanh)", n)
		return g.SortTopo()
	}
	return nil
}

func producerOrNil(v *graph.Value) *graph.Node {
	p, _ := v.Producer()
	return p
}

// tanhGelu matches y = Mul(Mul(x, 0.5), Add(Tanh(Mul(Add(x, Mul(Pow(x, 3),
// 0.044715)), √(2/π))), 1)) at y's producer, operands of Mul and Add in
// either order, every intermediate read only inside the pattern. It
// returns x and the seven inner nodes.
func tanhGelu(y *graph.Node) (*graph.Value, []*graph.Node, bool) {
	var inner []*graph.Node
	// sub matches a single-use value produced by op with one operand the
	// constant k (k NaN: any non-constant pair) and returns the other.
	sub := func(v *graph.Value, op string, k float64) (*graph.Value, *graph.Value, bool) {
		n, _ := v.Producer()
		if n == nil || n.Op != op || n.Domain != "" || n.NumInputs() != 2 || v.NumUses() != 1 || v.IsGraphOutput() {
			return nil, nil, false
		}
		a, b := n.Input(0), n.Input(1)
		if !math.IsNaN(k) {
			switch {
			case isConst(b, k):
			case isConst(a, k):
				a, b = b, a
			default:
				return nil, nil, false
			}
		}
		inner = append(inner, n)
		return a, b, true
	}
	if y.Op != "Mul" || y.Domain != "" || y.NumInputs() != 2 {
		return nil, nil, false
	}
	for _, order := range [][2]int{{0, 1}, {1, 0}} {
		inner = inner[:0]
		half, plus := y.Input(order[0]), y.Input(order[1])
		x, _, ok := sub(half, "Mul", 0.5)
		if !ok {
			continue
		}
		t, _, ok := sub(plus, "Add", 1)
		if !ok {
			continue
		}
		tn, _ := t.Producer()
		if tn == nil || tn.Op != "Tanh" || tn.Domain != "" || t.NumUses() != 1 || t.IsGraphOutput() {
			continue
		}
		inner = append(inner, tn)
		inSum, _, ok := sub(tn.Input(0), "Mul", math.Sqrt(2/math.Pi))
		if !ok {
			continue
		}
		a, b, ok := sub(inSum, "Add", math.NaN())
		if !ok {
			continue
		}
		if b == x {
			a, b = b, a
		}
		if a != x {
			continue
		}
		cube, _, ok := sub(b, "Mul", 0.044715)
		if !ok {
			continue
		}
		pn, _ := cube.Producer()
		if pn == nil || pn.Op != "Pow" || pn.Domain != "" || pn.Input(0) != x || !isConst(pn.Input(1), 3) || cube.NumUses() != 1 {
			continue
		}
		inner = append(inner, pn)
		return x, append([]*graph.Node(nil), inner...), true
	}
	return nil, nil, false
}

// isConst reports whether v is a one-element constant equal to k to
// float32 precision.
func isConst(v *graph.Value, k float64) bool {
	xs, ok := graph.ConstFloats(v)
	return ok && len(xs) == 1 && math.Abs(xs[0]-k) <= 1e-6*math.Max(1, math.Abs(k))
}

// padWideOutputs pads the weight of every MatMul that computes a graph
// output x·W (W a constant [K, N], or the Transpose of a constant [N, K]
// as torch.onnx writes a tied language-model head; N ≥ 4096 and not a
// multiple of 8) with zero columns to a multiple of 8, through a Pad node
// ONNX Runtime folds into a constant when the session starts, and slices
// the product back to N columns under the output's name. The weight
// itself is not touched, so a tied embedding keeps its shape.
func padWideOutputs(m *graph.Model) error {
	g := m.Graph
	for _, out := range append([]*graph.Value(nil), g.Outputs...) {
		n, _ := out.Producer()
		if n == nil || n.Op != "MatMul" || n.Domain != "" || n.Graph() != g || m.OpsetVersion("") < 13 {
			continue
		}
		w := n.Input(1)
		var cols, k int64
		if t := graph.ConstTensor(w); t != nil && len(t.Dims) == 2 {
			k, cols = t.Dims[0], t.Dims[1]
		} else if p, _ := w.Producer(); p != nil && p.Op == "Transpose" && p.Domain == "" {
			perm := p.AttrInts("perm")
			if t := graph.ConstTensor(p.Input(0)); t != nil && len(t.Dims) == 2 && (perm == nil || (len(perm) == 2 && perm[0] == 1 && perm[1] == 0)) {
				cols, k = t.Dims[0], t.Dims[1]
			}
		}
		if cols < 4096 || cols%8 == 0 || k <= 0 {
			continue
		}
		padded := (cols + 7) / 8 * 8
		b := &graph.Builder{G: g, Prefix: "canonical/pad", Metadata: n.Metadata}
		pw := b.Op("Pad", w.Name+".padded", []*graph.Value{w, b.Int64s(w.Name+".pads", []int64{0, 0, 0, padded - cols})})
		pw.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: k}, {Value: padded}}}
		wideOut := b.Op("MatMul", out.Name+".padded", []*graph.Value{n.Input(0), pw})
		sliced := b.Op("Slice", out.Name+".sliced", []*graph.Value{wideOut, b.Int64s(out.Name+".slice_starts", []int64{0}), b.Int64s(out.Name+".slice_ends", []int64{cols}), b.Int64s(out.Name+".slice_axes", []int64{-1})})
		name, typ, doc, meta := out.Name, out.Type, out.DocString, out.Metadata
		out.ReplaceAllUsesWith(sliced)
		for i, o := range g.Outputs {
			if o == out {
				g.Outputs[i] = sliced
			}
		}
		if err := g.RemoveNode(n); err != nil {
			return err
		}
		if err := sliced.Rename(name); err != nil {
			return err
		}
		sliced.Type, sliced.DocString, sliced.Metadata = typ, doc, meta
		if typ != nil && len(typ.Shape) > 0 {
			shape := append([]graph.Dim(nil), typ.Shape...)
			shape[len(shape)-1] = graph.Dim{Value: padded}
			wideOut.Type = &graph.TensorType{DType: typ.DType, Shape: shape}
		}
	}
	return g.SortTopo()
}

// foldBranchScales applies the branch-scale rewrite (see the pass comment)
// and returns how many scales it moved or dropped.
func (st *Compiler) foldBranchScales(g *graph.Graph) (int, error) {
	param := map[*graph.Value]bool{}
	for _, p := range st.params {
		param[p] = true
	}
	n := 0
	for _, node := range append([]*graph.Node(nil), g.Nodes...) {
		prod, k, kv, ok := scalarMul(node)
		if !ok || node.Output(0).IsGraphOutput() {
			continue
		}
		mm, _ := prod.Producer()
		if mm == nil || mm.Op != "MatMul" || mm.Domain != "" || !param[mm.Input(1)] || prod.NumUses() != 1 || prod.IsGraphOutput() {
			continue
		}
		if kv != 1 {
			b := &graph.Builder{G: g, Prefix: "canonical/scale", Metadata: mm.Metadata}
			scaled := b.Op("Mul", mm.Input(1).Name+".scaled", []*graph.Value{mm.Input(1), k})
			mm.SetInput(1, scaled)
		}
		node.Output(0).ReplaceAllUsesWith(prod)
		if err := g.RemoveNode(node); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// scalarMul splits n = Mul(x, k), either operand order, with k a rank-0
// constant (a [1] or wider k would broadcast x's rank), into x, k and k's
// value.
func scalarMul(n *graph.Node) (x, k *graph.Value, kv float64, ok bool) {
	if n.Op != "Mul" || n.Domain != "" || n.NumInputs() != 2 {
		return nil, nil, 0, false
	}
	for i := range 2 {
		c := n.Input(1 - i)
		t := graph.ConstTensor(c)
		ks, isFloat := graph.ConstFloats(c)
		if t != nil && len(t.Dims) == 0 && isFloat && len(ks) == 1 {
			return n.Input(i), c, ks[0], true
		}
	}
	return nil, nil, 0, false
}

// moveAttentionGuards applies the attention-guard rewrite (see the pass
// comment) and returns how many guards it moved.
func moveAttentionGuards(g *graph.Graph) (int, error) {
	n := 0
	for _, w := range append([]*graph.Node(nil), g.Nodes...) {
		if w.Op != "Where" || w.Domain != "" || w.NumInputs() != 3 {
			continue
		}
		p, guarded := w.Input(2), w.Output(0)
		isnan, _ := w.Input(0).Producer()
		sm, _ := p.Producer()
		if isnan == nil || sm == nil || isnan.Op != "IsNaN" || isnan.Domain != "" || isnan.Input(0) != p || sm.Op != "Softmax" || sm.Domain != "" ||
			!isConst(w.Input(1), 0) || w.Input(0).NumUses() != 1 || w.Input(0).IsGraphOutput() || p.NumUses() != 2 || p.IsGraphOutput() ||
			guarded.NumUses() != 1 || guarded.IsGraphOutput() {
			continue
		}
		u := guarded.Uses()[0]
		mm := u.Node
		if mm.Op != "MatMul" || mm.Domain != "" || u.Index != 0 || mm.Input(1) == guarded || mm.Output(0).IsGraphOutput() {
			continue
		}
		zero := w.Input(1)
		o := mm.Output(0)
		uses := o.Uses()
		mm.SetInput(0, p)
		b := &graph.Builder{G: g, Prefix: "canonical/guard", Metadata: mm.Metadata}
		nan := b.Op("IsNaN", o.Name+".isnan", []*graph.Value{o})
		safe := b.Op("Where", o.Name+".guarded", []*graph.Value{nan, zero, o})
		for _, u := range uses {
			u.Node.SetInput(u.Index, safe)
		}
		for _, dead := range []*graph.Node{w, isnan} { // readers first
			if err := g.RemoveNode(dead); err != nil {
				return n, err
			}
		}
		n++
	}
	return n, nil
}

// fuseRMSNorms applies the RMS-normalization rewrite (see the pass
// comment) and returns how many it fused.
func fuseRMSNorms(m *graph.Model) (int, error) {
	g := m.Graph
	if m.OpsetVersion("") < 13 {
		return 0, nil // ReduceMean's axes and keepdims as the matcher reads them
	}
	// only follows a single-use value to its one consumer.
	only := func(v *graph.Value) *graph.Node {
		if v.NumUses() != 1 || v.IsGraphOutput() {
			return nil
		}
		return v.Uses()[0].Node
	}
	other := func(n *graph.Node, v *graph.Value) *graph.Value {
		if n.NumInputs() != 2 {
			return nil
		}
		if n.Input(0) == v {
			return n.Input(1)
		}
		if n.Input(1) == v {
			return n.Input(0)
		}
		return nil
	}
	is := func(n *graph.Node, op string) bool { return n != nil && n.Op == op && n.Domain == "" }
	count := 0
	for _, pow := range append([]*graph.Node(nil), g.Nodes...) {
		if pow.Graph() == nil || !is(pow, "Pow") || !isConst(pow.Input(1), 2) {
			continue
		}
		x := pow.Input(0)
		mean := only(pow.Output(0))
		if !is(mean, "ReduceMean") || mean.AttrInt("keepdims", 1) != 1 || mean.Input(0) != pow.Output(0) {
			continue
		}
		axes := mean.AttrInts("axes")
		if mean.NumInputs() > 1 {
			axes, _ = graph.ConstInts(mean.Input(1))
		}
		if len(axes) != 1 || (axes[0] != -1 && (x.Type == nil || x.Type.Shape == nil || axes[0] != int64(len(x.Type.Shape)-1))) {
			continue
		}
		add := only(mean.Output(0))
		if !is(add, "Add") {
			continue
		}
		epsV := other(add, mean.Output(0))
		eps, ok := graph.ConstFloats(epsV)
		if epsV == nil || !ok || len(eps) != 1 {
			continue
		}
		sqrt := only(add.Output(0))
		if !is(sqrt, "Sqrt") {
			continue
		}
		rec := only(sqrt.Output(0))
		if !is(rec, "Reciprocal") {
			continue
		}
		norm := only(rec.Output(0))
		if !is(norm, "Mul") || other(norm, rec.Output(0)) != x {
			continue
		}
		scaleMul := only(norm.Output(0))
		if !is(scaleMul, "Mul") {
			continue
		}
		w := other(scaleMul, norm.Output(0))
		if w == nil || !isVector(w) {
			continue
		}
		y := scaleMul.Output(0)
		b := &graph.Builder{G: g, Prefix: "canonical/rmsnorm", Metadata: scaleMul.Metadata}
		outs := b.OpN("SimplifiedLayerNormalization", []string{y.Name + ".rms", y.Name + ".inv_std_var"}, []*graph.Value{x, w},
			graph.AttrI("axis", -1), graph.AttrF("epsilon", float32(eps[0])), graph.AttrI("stash_type", 1))
		name, typ, doc, meta := y.Name, y.Type, y.DocString, y.Metadata
		y.ReplaceAllUsesWith(outs[0])
		for i, o := range g.Outputs {
			if o == y {
				g.Outputs[i] = outs[0]
			}
		}
		for _, dead := range []*graph.Node{scaleMul, norm, rec, sqrt, add, mean, pow} { // readers first
			if err := g.RemoveNode(dead); err != nil {
				return count, err
			}
		}
		if err := outs[0].Rename(name); err != nil {
			return count, err
		}
		outs[0].Type, outs[0].DocString, outs[0].Metadata = typ, doc, meta
		count++
	}
	return count, nil
}

// isVector reports whether v is known to be 1-D: a constant or a value of
// declared rank 1.
func isVector(v *graph.Value) bool {
	if t := graph.ConstTensor(v); t != nil {
		return len(t.Dims) == 1
	}
	return v.Type != nil && v.Type.Shape != nil && len(v.Type.Shape) == 1
}

// mergeProductScales applies the scaled-product rewrite (see the pass
// comment) and returns how many products it changed.
func mergeProductScales(g *graph.Graph) (int, error) {
	// scaled is scalarMul of v's producer, for a float32 scale and a v
	// read only by the product.
	scaled := func(v *graph.Value) (*graph.Node, *graph.Value, float64, bool) {
		n, _ := v.Producer()
		if n == nil || v.NumUses() != 1 || v.IsGraphOutput() {
			return nil, nil, 0, false
		}
		x, k, kv, ok := scalarMul(n)
		if !ok || graph.ConstTensor(k).DType != graph.Float {
			return nil, nil, 0, false
		}
		return n, x, kv, true
	}
	count := 0
	for _, mm := range append([]*graph.Node(nil), g.Nodes...) {
		if mm.Op != "MatMul" || mm.Domain != "" || mm.NumInputs() != 2 {
			continue
		}
		na, a, ka, ok1 := scaled(mm.Input(0))
		nb, b, kb, ok2 := scaled(mm.Input(1))
		if !ok1 || !ok2 || na == nb {
			continue
		}
		k, err := graph.NewFloatTensor(mm.Name+".scale", graph.Float, nil, []float32{float32(ka * kb)})
		if err != nil {
			return count, err
		}
		bld := &graph.Builder{G: g, Prefix: "canonical/scale", Metadata: mm.Metadata}
		sa := bld.Op("Mul", a.Name+".scaled", []*graph.Value{a, bld.Const(k)})
		mm.SetInput(0, sa)
		mm.SetInput(1, b)
		for _, dead := range []*graph.Node{na, nb} {
			if err := g.RemoveNode(dead); err != nil {
				return count, err
			}
		}
		count++
	}
	return count, nil
}
