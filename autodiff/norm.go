package autodiff

// Gradient rules for normalizations: Softmax, LogSoftmax and
// LayerNormalization.

import (
	"github.com/loracc/loracc/graph"
)

// softmaxAxes returns the axes a (Log)Softmax normalizes over. From opset
// 13 that is the one axis (default −1; ReduceSum takes it negative as it
// is). Before 13 the input is coerced to 2-D at axis (default 1), so the
// normalization runs over every axis from axis on, and the rank must be
// known.
func (c *gradCtx) softmaxAxes(n *graph.Node) []int64 {
	if c.Opset >= 13 {
		return []int64{n.AttrInt("axis", -1)}
	}
	r := c.rank(n.Input(0))
	if r < 0 {
		return nil
	}
	a, err := graph.NormAxis(n.AttrInt("axis", 1), r)
	if err != nil {
		c.Fail(err)
		return nil
	}
	return iota64(a, int64(r))
}

// y = softmax(x): dx = y·(gy − Σ gy·y).
//
// In attention, y (or Where(IsNaN(y), 0, y), which passes gy through)
// feeds only o = y·V, with the softmax over the contracted last axis.
// Then gy = go·Vᵀ and Σ_j gy_ij·y_ij = Σ_d go_id·o_id: the row sums come
// from go ⊙ o, shaped like the head outputs [.., T, D], instead of an
// attention-sized product and reduction (FlashAttention's D = rowsum(dO ∘
// O)). Mathematically the same sums; rounded in another order.
func gradSoftmax(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, y := gys[0], n.Output(0)
	var s *graph.Value
	if o := c.attentionOutput(n); o != nil {
		s = c.rowSums(o, c.Inf.DType(y))
	}
	if s == nil {
		s = c.ReduceSum(c.Mul(gy, y), c.softmaxAxes(n), true)
	}
	return vals(c.Mul(y, c.Sub(gy, s)))
}

// rowSums is Σ_d go·o over the last axis of the attention output o,
// keeping it, or nil without go. When o's one forward reader is a
// Transpose that keeps the last axis (the heads moved back beside the
// tokens), the sums are taken over that transpose and its gradient and
// the [.., 1] sums transposed back: the backward then reads only the
// transposed copy — which the output projection's LoRA gradient keeps
// anyway — and not o too (a [B, H, T, D] tensor a layer: 32 MiB of the 1B
// Llama at 8 × 512). The same additions in the same order. The sums are
// taken in dt, y's type: under autocast o is the bfloat16 (or float16)
// product of the cast probabilities, and its [.., D] rows are cast to
// float32 before the products, so nothing [.., T, T] is read for them.
func (c *gradCtx) rowSums(o *graph.Value, dt graph.DataType) *graph.Value {
	as := func(v *graph.Value) *graph.Value {
		if c.Inf.DType(v) == dt {
			return v
		}
		return c.Cast(v, dt)
	}
	if us := c.forwardUses(o); len(us) == 1 && us[0].Node.Op == "Transpose" && us[0].Node.Domain == "" {
		t := us[0].Node
		perm := t.AttrInts("perm")
		r := len(perm)
		if r >= 2 && perm[r-1] == int64(r-1) {
			if gt := c.gradOf(t.Output(0)); gt != nil {
				inv := make([]int64, r)
				for i, p := range perm {
					inv[p] = int64(i)
				}
				st := c.ReduceSum(c.Mul(as(gt), as(t.Output(0))), []int64{-1}, true)
				return c.Transpose(st, inv...)
			}
		}
	}
	if gout := c.gradOf(o); gout != nil {
		return c.ReduceSum(c.Mul(as(gout), as(o)), []int64{-1}, true)
	}
	return nil
}

// attentionOutput is o = MatMul(p, V) when that is the only forward
// consumer of softmax node n's output y, directly (p = y), through the
// NaN guard p = Where(IsNaN(y), 0, y), and/or (unless NoCastRowSums)
// through autocast's Cast of the probabilities to the compute type; the
// softmax is over y's last axis and o has y's leading dims (no
// broadcasting of y). Otherwise nil.
//
// Under autocast Σ gy·y differs from Σ go·o by the cast's rounding of y
// (and o's own): a relative 2⁻⁸ in bfloat16, the operands' precision, and
// what FlashAttention's backward computes (D = rowsum(dO ∘ O)).
func (c *gradCtx) attentionOutput(n *graph.Node) *graph.Value {
	y := n.Output(0)
	r := c.Inf.Rank(y)
	if r < 2 || len(n.Outputs()) != 1 {
		return nil
	}
	if axes := c.softmaxAxes(n); len(axes) != 1 || !c.sameAxis(axes[0], -1, y) {
		return nil
	}
	// p walks from y to the product's operand: the guard first (its IsNaN
	// reads y too), then the cast.
	p := y
	if us := c.forwardUses(y); len(us) == 2 {
		for _, u := range us {
			if u.Node.Op == "Where" && u.Index == 2 && nanGuardOfSoftmax(u.Node) {
				p = u.Node.Output(0)
			}
		}
		for _, u := range us {
			if u.Node.Op != "IsNaN" && u.Node.Output(0) != p {
				return nil
			}
		}
	}
	if us := c.forwardUses(p); !c.opts.NoCastRowSums && len(us) == 1 && us[0].Node.Op == "Cast" && us[0].Node.Domain == "" && c.Inf.DType(us[0].Node.Output(0)).IsFloat() {
		p = us[0].Node.Output(0)
	}
	var mm *graph.Node
	for _, u := range c.forwardUses(p) {
		if u.Node.Op != "MatMul" || u.Node.Domain != "" || u.Index != 0 || mm != nil {
			return nil
		}
		mm = u.Node
	}
	if mm == nil || mm.Input(1) == p {
		return nil
	}
	o := mm.Output(0)
	yd, od := c.Inf.Info(y).Dims, c.Inf.Info(o).Dims
	if len(yd) != r || len(od) != r {
		return nil
	}
	for i := 0; i < r-1; i++ {
		a, b := yd[i], od[i]
		if !((a.Known() && b.Known() && a.Value == b.Value) || (a.Param != "" && a.Param == b.Param)) {
			return nil
		}
	}
	return o
}

// y = log softmax(x): dx = gy − e^y·Σ gy.
//
// When gy is one value v per row along the axis (the cross-entropy
// loss picks each label's log-probability: selectOne), Σ gy is v itself
// and dx is e^y·(−v) with v added at the picked position: one
// ScatterElements into the product instead of a dense subtraction, so
// the vocabulary-sized tensor is read and written twice, not four times.
// The values are the same: at the pick (−e^y·v) + v = v − e^y·v, and
// elsewhere 0 − e^y·v = e^y·(−v), exactly in IEEE arithmetic.
func gradLogSoftmax(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, y := gys[0], n.Output(0)
	axes := c.softmaxAxes(n)
	if p, ok := c.picks[gy]; ok && c.Opset >= 16 && len(axes) == 1 && c.sameAxis(axes[0], p.axis, y) {
		m := c.Mul(c.Exp(y), c.Neg(p.val))
		return vals(c.Op("ScatterElements", vals(m, p.idx, p.val), graph.AttrI("axis", p.axis), graph.AttrS("reduction", "add")))
	}
	s := c.ReduceSum(gy, axes, true)
	return vals(c.Sub(gy, c.Mul(c.Exp(y), s)))
}

// sameAxis reports whether axes a and b (either may count from the end)
// name the same axis of v, whose rank must be known.
func (c *gradCtx) sameAxis(a, b int64, v *graph.Value) bool {
	r := c.Inf.Rank(v)
	if r < 0 {
		return false
	}
	na, err1 := graph.NormAxis(a, r)
	nb, err2 := graph.NormAxis(b, r)
	return err1 == nil && err2 == nil && na == nb
}

// LayerNormalization (opset 17): over the axes from axis on,
// x̂ = (x − μ)·ρ with ρ = 1/√(σ² + ε), Y = x̂·Scale + B, and optional
// outputs Mean = μ and InvStdDev = ρ. The rule recomputes μ, ρ and x̂ in
// x's type instead of reading the optional outputs, which the exporter
// usually omits (for fp16 inputs with stash_type=1 ORT keeps them in fp32;
// the recomputation is then in fp16).
//
//	dB     = Σ gY                 (over the leading axes: by the driver)
//	dScale = Σ gY·x̂
//	dx     = ρ·(g − mean g − x̂·mean(g·x̂)),  g = gY·Scale
//	       + gMean/N − gInvStdDev·ρ³·(x − μ)/N
//
// (The RMS norm's x̂ = Y/Scale is not used here: with Mean unread, ONNX
// Runtime 1.29's SkipLayerNormalization fusion took a BERT residual's
// normalization and lost its InvStdDev edge — "Missing Input" at run
// time, measured — so x̂ is (x − μ)·ρ, reading Mean.)
func gradLayerNorm(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, scale, bias := n.Input(0), n.Input(1), n.Input(2)
	axes := c.normalizedAxes(n, x)
	if axes == nil {
		return nil
	}
	out := make([]*graph.Value, n.NumInputs())
	gy := gys[0]
	if gy != nil && bias != nil && c.needs(2) {
		out[2] = gy
	}
	if !c.needs(0) && !c.needs(1) {
		return out // dB needs no statistics
	}
	// The statistics: the forward node's Mean and InvStdDev outputs when
	// it has them (pass canonicalize asks for them), else recomputed.
	var mu, rho, xc *graph.Value
	if m, r := n.Output(1), n.Output(2); m != nil && r != nil && c.Inf.DType(m) == c.Inf.DType(x) {
		mu, rho = m, r
		xc = c.Sub(x, mu)
	} else {
		eps := c.K(float64(n.AttrFloat("epsilon", 1e-5)), x)
		mu = c.ReduceMean(x, axes)
		xc = c.Sub(x, mu)
		variance := c.ReduceMean(c.Mul(xc, xc), axes)
		rho = c.Reciprocal(c.Sqrt(c.Add(variance, eps)))
	}
	xhat := c.Mul(xc, rho)
	if gy != nil && c.needs(1) {
		out[1] = c.Mul(gy, xhat)
	}
	if !c.needs(0) {
		return out
	}
	var terms []*graph.Value
	if gy != nil {
		g := c.Mul(gy, scale)
		m1 := c.ReduceMean(g, axes)
		m2 := c.ReduceMean(c.Mul(g, xhat), axes)
		terms = append(terms, c.Mul(rho, c.Sub(c.Sub(g, m1), c.Mul(xhat, m2))))
	}
	var gMean, gRho *graph.Value
	if len(gys) > 1 {
		gMean = gys[1]
	}
	if len(gys) > 2 {
		gRho = gys[2]
	}
	if gMean != nil || gRho != nil {
		invN := c.countRatio(mu, x) // 1/N, N = elements per normalized group
		if gMean != nil {
			// Expand: this term alone must already have x's shape.
			terms = append(terms, c.Expand(c.Mul(c.CastTo(gMean, x), invN), c.Shape(x)))
		}
		if gRho != nil {
			gr := c.CastTo(gRho, x)
			rho3 := c.Mul(rho, c.Mul(rho, rho))
			terms = append(terms, c.Neg(c.Mul(c.Mul(gr, rho3), c.Mul(xc, invN))))
		}
	}
	switch len(terms) {
	case 0:
	case 1:
		out[0] = terms[0]
	default:
		out[0] = c.Sum(terms...)
	}
	return out
}

// SimplifiedLayerNormalization (ONNX Runtime's RMS normalization, which
// its optimizer fuses from x·(mean x² + ε)^−½·w and canonicalize writes
// for the same pattern): over the axes from axis on, ρ = 1/√(mean x² + ε),
// x̂ = x·ρ, Y = x̂·Scale, optional output InvStdVar = ρ.
//
//	dScale = Σ gY·x̂                 (over the leading axes: by the driver)
//	dx     = ρ·(g − x̂·mean(g·x̂)),  g = gY·Scale
//	       − gInvStdVar·ρ³·x/N
//
// x̂ is Y/Scale when the backward keeps Y anyway — it feeds a product
// whose other operand needs a gradient (the q/k/v projections' LoRA
// input) — and Scale is a constant without zeros: then the backward need
// not keep x, the residual stream, too (one [B, T, H] tensor a layer).
// Y/Scale is x̂ up to Y's rounding.
func gradSimplifiedLayerNorm(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, scale := n.Input(0), n.Input(1)
	axes := c.normalizedAxes(n, x)
	if axes == nil {
		return nil
	}
	// ρ is the node's InvStdVar output when it has one, cast to x's type
	// when ORT stashes it in float32 (16-bit inputs), else recomputed.
	var rho *graph.Value
	stashed := false
	switch r := n.Output(1); {
	case r != nil && c.Inf.DType(r) == c.Inf.DType(x):
		rho, stashed = r, true
	case r != nil && c.Inf.DType(r) == graph.Float && c.Inf.DType(x).IsFloat():
		rho, stashed = c.Cast(r, c.Inf.DType(x)), true
	default:
		rho = c.rmsInv(x, axes, n.AttrFloat("epsilon", 1e-5))
	}
	var xhat *graph.Value
	if (len(gys) < 2 || gys[1] == nil) && stashed && c.keptForParams(n.Output(0)) && nonzeroConst(scale) {
		xhat = c.Div(n.Output(0), scale)
	} else {
		xhat = c.Mul(x, rho)
	}
	out := make([]*graph.Value, n.NumInputs())
	gy := gys[0]
	if gy != nil && c.needs(1) {
		out[1] = c.Mul(gy, xhat)
	}
	if !c.needs(0) {
		return out
	}
	var terms []*graph.Value
	if gy != nil {
		terms = append(terms, c.rmsBack(gy, scale, xhat, rho, axes))
	}
	if len(gys) > 1 && gys[1] != nil {
		rho3 := c.Mul(rho, c.Mul(rho, rho))
		terms = append(terms, c.Neg(c.Mul(c.Mul(c.CastTo(gys[1], x), rho3), c.Mul(x, c.countRatio(rho, x)))))
	}
	switch len(terms) {
	case 1:
		out[0] = terms[0]
	case 2:
		out[0] = c.Add(terms[0], terms[1])
	}
	return out
}

// keptForParams reports whether the backward reads v anyway: a forward
// MatMul or Gemm reads it beside an operand whose gradient is needed
// (the product's rule then reads v for that gradient).
func (c *gradCtx) keptForParams(v *graph.Value) bool {
	for _, u := range c.forwardUses(v) {
		if (u.Node.Op == "MatMul" || u.Node.Op == "Gemm") && u.Node.Domain == "" && u.Index < 2 {
			if other := u.Node.Input(1 - u.Index); other != nil && c.want[other] {
				return true
			}
		}
	}
	return false
}

// nonzeroConst reports whether v is a constant none of whose elements is 0.
func nonzeroConst(v *graph.Value) bool {
	t := graph.ConstTensor(v)
	if t == nil {
		return false
	}
	xs, err := t.Floats()
	if err != nil || len(xs) == 0 {
		return false
	}
	for _, x := range xs {
		if x == 0 {
			return false
		}
	}
	return true
}

// rmsInv is ρ = 1/√(mean(x²) + ε) over axes, kept for broadcasting.
func (c *gradCtx) rmsInv(x *graph.Value, axes []int64, eps float32) *graph.Value {
	return c.Reciprocal(c.Sqrt(c.Add(c.ReduceMean(c.Mul(x, x), axes), c.K(float64(eps), x))))
}

// rmsBack is RMS normalization's input gradient from its output's:
// ρ·(g − x̂·mean(g·x̂)) with g = gY·scale and x̂ = x·ρ.
func (c *gradCtx) rmsBack(gy, scale, xhat, rho *graph.Value, axes []int64) *graph.Value {
	g := c.Mul(gy, scale)
	return c.Mul(rho, c.Sub(g, c.Mul(xhat, c.ReduceMean(c.Mul(g, xhat), axes))))
}

// normalizedAxes is the axes a (Simplified)LayerNormalization normalizes
// over, from its axis attribute on: [axis, ..., −1] with no rank needed
// when axis counts from the end. nil (error recorded) when axis is
// positive and x's rank is unknown.
func (c *gradCtx) normalizedAxes(n *graph.Node, x *graph.Value) []int64 {
	axis := n.AttrInt("axis", -1)
	if axis < 0 {
		return iota64(axis, 0)
	}
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	return iota64(axis, int64(r))
}

// com.microsoft SkipSimplifiedLayerNormalization (onnxruntime-genai's
// residual + RMSNorm): s = input + skip (+ bias), Y = RMSNorm(s)·gamma over
// the last axis, outputs Y, mean (not produced), inv_std_var and s. ORT
// runs the fused kernel forward; the rule recomputes ρ from s (the sum
// output when the node has it) and reads like SimplifiedLayerNormalization's:
//
//	ds = ρ·(g − ŝ·mean(g·ŝ)) + gS,  g = gY·gamma, ŝ = s·ρ
//	dinput = dskip = dbias = ds   (skip and bias summed to their shapes by the driver)
//	dgamma = Σ gY·ŝ
func gradSkipSimplifiedLayerNorm(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, skip, gamma := n.Input(0), n.Input(1), n.Input(2)
	if len(gys) > 1 && gys[1] != nil {
		return c.failf("the mean output (1) is not differentiable: ORT does not compute it")
	}
	if len(gys) > 2 && gys[2] != nil {
		// ORT 1.29's CPU kernel leaves it unset ("Missing Input" for a
		// reader, measured), so no model can read it through the step.
		return c.failf("the inv_std_var output (2) feeds the loss; ONNX Runtime's kernel does not compute it")
	}
	var s *graph.Value
	if len(n.Outputs()) > 3 && n.Output(3) != nil {
		s = n.Output(3)
	} else {
		s = c.Add(x, skip)
		if n.NumInputs() > 3 && n.Input(3) != nil {
			s = c.Add(s, n.Input(3))
		}
	}
	axes := []int64{-1}
	rho := c.rmsInv(s, axes, n.AttrFloat("epsilon", 1e-12))
	shat := c.Mul(s, rho)
	out := make([]*graph.Value, n.NumInputs())
	var ds *graph.Value
	if gy := gys[0]; gy != nil {
		ds = c.rmsBack(gy, gamma, shat, rho, axes)
		if c.needs(2) {
			out[2] = c.Mul(gy, shat)
		}
	}
	if len(gys) > 3 && gys[3] != nil {
		if ds == nil {
			ds = gys[3]
		} else {
			ds = c.Add(ds, gys[3])
		}
	}
	for _, i := range []int{0, 1, 3} {
		if i < n.NumInputs() && n.Input(i) != nil && c.needs(i) {
			out[i] = ds
		}
	}
	return out
}
