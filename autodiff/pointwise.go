package autodiff

// Gradient rules for elementwise functions: powers, exponentials,
// activations, selections (Where, Max, Min, Clip, Abs) and casts. Rules
// reuse the forward output where the derivative is cheaper in terms of it
// (Exp, Tanh, Sigmoid, Sqrt, Reciprocal). The broadcasting ones (Pow,
// Where, Max, Min, Clip's bounds) return output-shaped gradients for the
// driver to sum back.

import (
	"math"

	"github.com/loracc/loracc/graph"
)

// where0 is Where(cond, v, 0).
func (c *gradCtx) where0(cond, v *graph.Value) *graph.Value {
	return c.Where(cond, v, c.K(0, v))
}

// y = a^b: da = gy·b·a^(b−1), db = gy·y·ln a. Like PyTorch, da is 0 where
// b = 0 and db is 0 where a = 0 and b ≥ 0 (so 0^b never makes a NaN). The
// exponent may have another element type than the base (opset 12+): its
// gradient is computed in the base's type, and the driver casts it after
// summing it to b's shape.
func gradPow(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, a, b, y := gys[0], n.Input(0), n.Input(1), n.Output(0)
	bb := c.CastTo(b, a)
	zero := c.K(0, a)
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		d := c.Mul(bb, c.Pow(a, c.Sub(bb, c.K(1, a))))
		if ks, ok := graph.ConstFloats(b); !ok || hasZero(ks) {
			d = c.Where(c.Equal(bb, zero), zero, d)
		}
		out[0] = c.Mul(gy, d)
	}
	if c.needs(1) {
		d := c.Mul(y, c.Log(a))
		at0 := c.And(c.Equal(a, zero), c.Not(c.Less(bb, zero)))
		out[1] = c.Mul(gy, c.Where(at0, zero, d))
	}
	return out
}

func hasZero(xs []float64) bool {
	for _, x := range xs {
		if x == 0 {
			return true
		}
	}
	return false
}

// y = √x: dx = ½gy / y.
func gradSqrt(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy := gys[0]
	return vals(c.Div(c.Mul(gy, c.K(0.5, gy)), n.Output(0)))
}

// y = 1/x: dx = −gy·y².
func gradReciprocal(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	y := n.Output(0)
	return vals(c.Neg(c.Mul(gys[0], c.Mul(y, y))))
}

// y = eˣ: dx = gy·y.
func gradExp(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(c.Mul(gys[0], n.Output(0)))
}

// y = ln x: dx = gy / x.
func gradLog(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(c.Div(gys[0], n.Input(0)))
}

// y = tanh x: dx = gy·(1 − y²).
func gradTanh(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	y := n.Output(0)
	y2 := c.Mul(y, y)
	return vals(c.Mul(gys[0], c.Sub(c.K(1, y2), y2)))
}

// y = σ(x): dx = gy·y·(1 − y).
func gradSigmoid(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	y := n.Output(0)
	return vals(c.Mul(gys[0], c.Mul(y, c.Sub(c.K(1, y), y))))
}

// y = max(x, 0): dx = gy where x > 0 (0 at x = 0, as PyTorch).
func gradRelu(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x := n.Input(0)
	return vals(c.where0(c.Greater(x, c.K(0, x)), gys[0]))
}

// y = erf x: dx = gy·(2/√π)·e^(−x²).
func gradErf(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x := n.Input(0)
	e := c.Exp(c.Neg(c.Mul(x, x)))
	return vals(c.Mul(gys[0], c.Mul(e, c.K(2/math.Sqrt(math.Pi), e))))
}

// Gelu (opset 20). approximate="none": y = x·Φ(x), dy/dx = Φ(x) + x·φ(x).
// approximate="tanh": y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³).
// With ½(1 + tanh u) = σ(2u) that is y = x·σ(v), v = x·(2k + 2ka·x²)
// (k = √(2/π), a = 0.044715), and
//
//	dy/dx = σ(v)·(1 + x·v′·(1 − σ(v))),  x·v′ = x·(2k + 6ka·x²):
//
// 13 elementwise kernels where the tanh form takes 18, for a tensor as
// wide as the MLP (GPT-2 small: twelve [8, 512, 3072] per step). Finite
// for |x| < 1e12 (beyond, x·v′ overflows while 1 − σ(v) is 0).
func gradGelu(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x := n.Input(0)
	approx := "none"
	if a := n.Attr("approximate"); a != nil {
		approx = string(a.S)
	}
	k := func(v float64) *graph.Value { return c.K(v, x) }
	half, one := k(0.5), k(1)
	x2 := c.Mul(x, x)
	var d *graph.Value
	switch approx {
	case "none":
		invSqrt2, invSqrt2Pi := k(1/math.Sqrt2), k(1/math.Sqrt(2*math.Pi))
		cdf := c.Mul(half, c.Add(one, c.Erf(c.Mul(x, invSqrt2))))
		pdf := c.Mul(invSqrt2Pi, c.Exp(c.Neg(c.Mul(x2, half))))
		d = c.Add(cdf, c.Mul(x, pdf))
	case "tanh":
		k2, a := 2*math.Sqrt(2/math.Pi), 0.044715
		sv := c.Sigmoid(c.Mul(x, c.Add(c.Mul(x2, k(k2*a)), k(k2))))
		xdv := c.Mul(x, c.Add(c.Mul(x2, k(3*k2*a)), k(k2)))
		d = c.Mul(sv, c.Add(one, c.Mul(xdv, c.Sub(one, sv))))
	default:
		return c.failf("unknown approximate=%q (want none or tanh)", approx)
	}
	return vals(c.Mul(gys[0], d))
}

// y = |x|: dx = gy·sign(x) (0 at x = 0, as PyTorch).
func gradAbs(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(c.Mul(gys[0], c.Sign(n.Input(0))))
}

// Clip passes gy where min ≤ x ≤ max (bounds inclusive, as PyTorch's
// clamp). The bounds are attributes before opset 11 and optional inputs
// from 11; a bound input that needs a gradient gets gy where x is beyond
// it (summed to its shape by the driver).
func gradClip(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	x, gy := n.Input(0), gys[0]
	var lo, hi *graph.Value
	if c.Opset < 11 {
		if a := n.Attr("min"); a != nil {
			lo = c.K(float64(a.F), x)
		}
		if a := n.Attr("max"); a != nil {
			hi = c.K(float64(a.F), x)
		}
	} else {
		lo, hi = n.Input(1), n.Input(2)
	}
	out := make([]*graph.Value, n.NumInputs())
	// Not(Less) and Not(Greater) rather than GreaterOrEqual/LessOrEqual,
	// which only exist from opset 12.
	var mask *graph.Value
	if lo != nil {
		below := c.Less(x, lo)
		mask = c.Not(below)
		if c.Opset >= 11 && c.needs(1) {
			out[1] = c.where0(below, gy)
		}
	}
	if hi != nil {
		above := c.Greater(x, hi)
		in := c.Not(above)
		if mask == nil {
			mask = in
		} else {
			mask = c.And(mask, in)
		}
		if c.Opset >= 11 && c.needs(2) {
			out[2] = c.where0(above, gy)
		}
	}
	if mask == nil {
		out[0] = gy
	} else {
		out[0] = c.where0(mask, gy)
	}
	return out
}

// Dropout is the identity in inference mode, the only mode supported:
// a training_mode input must be a constant false.
func gradDropout(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if tm := n.Input(2); tm != nil {
		var raw []byte
		if t := graph.ConstTensor(tm); t != nil && t.DType == graph.Bool {
			raw, _ = t.Bytes()
		}
		if len(raw) != 1 || raw[0] != 0 {
			return c.failf("training-mode Dropout is not supported (training_mode %q is not a constant false)", tm.Name)
		}
	}
	out := make([]*graph.Value, n.NumInputs())
	out[0] = gys[0]
	return out
}

// Max and Min (elementwise, variadic, broadcasting): gy goes to the
// inputs equal to the result, split evenly among ties — PyTorch's
// convention for torch.maximum/minimum (each gets gy/2 on a tie of two).
func gradMaxMin(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, y := gys[0], n.Output(0)
	k := n.NumInputs()
	if k == 1 {
		return vals(gy)
	}
	masks := make([]*graph.Value, k)
	for i := range k {
		masks[i] = c.CastTo(c.Equal(n.Input(i), y), y)
	}
	share := c.Div(gy, c.Sum(masks...))
	out := make([]*graph.Value, k)
	for i := range k {
		if c.needs(i) {
			out[i] = c.Mul(share, masks[i])
		}
	}
	return out
}

// Where(cond, x, y): x gets gy where cond holds, y elsewhere. cond gets
// nothing.
func gradWhere(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, cond := gys[0], n.Input(0)
	if nanGuardOfSoftmax(n) {
		// Where(IsNaN(y), 0, y) after y = Softmax(x), as torch.onnx writes
		// scaled_dot_product_attention: passing gy through unmasked gives
		// the same dx. Softmax's rule multiplies by y, and a row of y with
		// a NaN has a NaN Σ gy·y under either gradient, so such rows of dx
		// are NaN both ways and every other row sees gy unchanged. This
		// saves an attention-sized select per layer and the bool mask the
		// backward would keep.
		return vals(nil, nil, gy)
	}
	zero := c.K(0, gy)
	out := make([]*graph.Value, 3)
	if slot := maskedScores(c, n); slot > 0 {
		out[slot] = gy
		return out
	}
	if c.needs(1) {
		out[1] = c.Where(cond, gy, zero)
	}
	if c.needs(2) {
		out[2] = c.Where(cond, zero, gy)
	}
	return out
}

// maskedScores is the slot (1 or 2) of the scores when n masks them for a
// softmax: Where(cond, scores, fill) or Where(cond, fill, scores) with fill
// a constant at most −1e4, read only by a Softmax over the last axis
// (directly or through one float Cast, autocast's). Otherwise 0.
//
// The scores then get gy itself, not gy where they are kept: at a filled
// position the probability is exp(fill − max) = 0 exactly (float32's exp
// underflows below −104) in every row with a kept position, so the
// softmax's gradient gy = y·(g − Σ g·y) is exactly 0 there already. A row
// with no kept position (a padding query with no key to see) is uniform
// instead; its output reaches the loss only through positions that mask
// it in turn, so its g is 0 and gy is 0 too. This saves an
// attention-sized select per layer and the bool mask the backward would
// read, as PyTorch's additive masks do.
func maskedScores(c *gradCtx, n *graph.Node) int {
	slot := 0
	for i, fill := range []*graph.Value{n.Input(2), n.Input(1)} {
		if zs, ok := graph.ConstFloats(fill); ok && len(zs) == 1 && zs[0] <= -1e4 {
			slot = i + 1
		}
	}
	if slot == 0 {
		return 0
	}
	y := n.Output(0)
	for range 2 {
		us := c.forwardUses(y)
		if len(us) != 1 {
			return 0
		}
		u := us[0].Node
		switch {
		case u.Op == "Cast" && u.Domain == "" && c.Inf.DType(u.Output(0)).IsFloat():
			y = u.Output(0)
		case u.Op == "Softmax" && u.Domain == "":
			if axes := c.softmaxAxes(u); len(axes) == 1 && c.sameAxis(axes[0], -1, y) {
				return slot
			}
			return 0
		default:
			return 0
		}
	}
	return 0
}

// nanGuardOfSoftmax reports whether n is Where(IsNaN(y), 0, y) with y
// the output of a Softmax.
func nanGuardOfSoftmax(n *graph.Node) bool {
	y := n.Input(2)
	isnan, _ := n.Input(0).Producer()
	sm, _ := y.Producer()
	if isnan == nil || sm == nil || isnan.Op != "IsNaN" || isnan.Domain != "" || isnan.Input(0) != y || sm.Op != "Softmax" || sm.Domain != "" {
		return false
	}
	zs, ok := graph.ConstFloats(n.Input(1))
	return ok && len(zs) == 1 && zs[0] == 0
}

// Cast and CastLike(x, like): the gradient is cast back to x's float
// type; an integer or bool x, and CastLike's template, get none.
func gradCast(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	out := make([]*graph.Value, n.NumInputs())
	if x := n.Input(0); !isDiscrete(c.Inf.DType(x)) {
		out[0] = c.CastTo(gys[0], x)
	}
	return out
}
