package autodiff

// Gradient rules for elementwise functions: powers, exponentials,
// activations, selections (Where, Max, Min, Clip, Abs) and casts. Rules
// reuse the forward output where the derivative is cheaper in terms of it
// (Exp, Tanh, Sigmoid, Sqrt, Reciprocal).

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// mulK is v·k for a constant k of v's type.
func (c *gradCtx) mulK(v *graph.Value, k float64) (*graph.Value, error) {
	s, err := c.Scalar(k, v)
	if err != nil {
		return nil, err
	}
	return c.Op("Mul", vals(v, s)), nil
}

// kSub is k − v for a constant k of v's type.
func (c *gradCtx) kSub(k float64, v *graph.Value) (*graph.Value, error) {
	s, err := c.Scalar(k, v)
	if err != nil {
		return nil, err
	}
	return c.Op("Sub", vals(s, v)), nil
}

// where0 is Where(cond, v, 0).
func (c *gradCtx) where0(cond, v *graph.Value) (*graph.Value, error) {
	z, err := c.Scalar(0, v)
	if err != nil {
		return nil, err
	}
	return c.Op("Where", vals(cond, v, z)), nil
}

// y = a^b: da = gy·b·a^(b−1), db = gy·y·ln a. Like PyTorch, da is 0 where
// b = 0 and db is 0 where a = 0 and b ≥ 0 (so 0^b never makes a NaN). The
// exponent may have another element type than the base (opset 12+).
func gradPow(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, a, b, y := gys[0], n.Input(0), n.Input(1), n.Output(0)
	bb, err := c.CastTo(b, a)
	if err != nil {
		return nil, err
	}
	zero, err := c.Scalar(0, a)
	if err != nil {
		return nil, err
	}
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		one, err := c.Scalar(1, a)
		if err != nil {
			return nil, err
		}
		d := c.Op("Mul", vals(bb, c.Op("Pow", vals(a, c.Op("Sub", vals(bb, one))))))
		if ks, ok := graph.ConstFloats(b); !ok || hasZero(ks) {
			d = c.Op("Where", vals(c.Op("Equal", vals(bb, zero)), zero, d))
		}
		out[0] = c.unbroadcast(c.Op("Mul", vals(gy, d)), a)
	}
	if c.needs(1) {
		d := c.Op("Mul", vals(y, c.Op("Log", vals(a))))
		at0 := c.Op("And", vals(c.Op("Equal", vals(a, zero)), c.Op("Not", vals(c.Op("Less", vals(bb, zero))))))
		d = c.Op("Where", vals(at0, zero, d))
		gb, err := c.CastTo(c.unbroadcast(c.Op("Mul", vals(gy, d)), b), b)
		if err != nil {
			return nil, err
		}
		out[1] = gb
	}
	return out, nil
}

func hasZero(xs []float64) bool {
	for _, x := range xs {
		if x == 0 {
			return true
		}
	}
	return false
}

// y = √x: dx = gy / (2y).
func gradSqrt(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	h, err := c.mulK(gys[0], 0.5)
	if err != nil {
		return nil, err
	}
	return vals(c.Op("Div", vals(h, n.Output(0)))), nil
}

// y = 1/x: dx = −gy·y².
func gradReciprocal(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	y := n.Output(0)
	return vals(c.Op("Neg", vals(c.Op("Mul", vals(gys[0], c.Op("Mul", vals(y, y))))))), nil
}

// y = eˣ: dx = gy·y.
func gradExp(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	return vals(c.Op("Mul", vals(gys[0], n.Output(0)))), nil
}

// y = ln x: dx = gy / x.
func gradLog(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	return vals(c.Op("Div", vals(gys[0], n.Input(0)))), nil
}

// y = tanh x: dx = gy·(1 − y²).
func gradTanh(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	y := n.Output(0)
	d, err := c.kSub(1, c.Op("Mul", vals(y, y)))
	if err != nil {
		return nil, err
	}
	return vals(c.Op("Mul", vals(gys[0], d))), nil
}

// y = σ(x): dx = gy·y·(1 − y).
func gradSigmoid(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	y := n.Output(0)
	d, err := c.kSub(1, y)
	if err != nil {
		return nil, err
	}
	return vals(c.Op("Mul", vals(gys[0], c.Op("Mul", vals(y, d))))), nil
}

// y = max(x, 0): dx = gy where x > 0 (0 at x = 0, as PyTorch).
func gradRelu(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x := n.Input(0)
	zero, err := c.Scalar(0, x)
	if err != nil {
		return nil, err
	}
	g, err := c.where0(c.Op("Greater", vals(x, zero)), gys[0])
	return vals(g), err
}

// y = erf x: dx = gy·(2/√π)·e^(−x²).
func gradErf(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x := n.Input(0)
	e := c.Op("Exp", vals(c.Op("Neg", vals(c.Op("Mul", vals(x, x))))))
	d, err := c.mulK(e, 2/math.Sqrt(math.Pi))
	if err != nil {
		return nil, err
	}
	return vals(c.Op("Mul", vals(gys[0], d))), nil
}

// Gelu (opset 20). approximate="none": y = x·Φ(x), dy/dx = Φ(x) + x·φ(x).
// approximate="tanh": y = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³),
// dy/dx = ½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²), t = tanh u.
func gradGelu(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x := n.Input(0)
	approx := "none"
	if a := n.Attr("approximate"); a != nil {
		approx = string(a.S)
	}
	k := func(v float64) (*graph.Value, error) { return c.Scalar(v, x) }
	half, err := k(0.5)
	if err != nil {
		return nil, err
	}
	one, err := k(1)
	if err != nil {
		return nil, err
	}
	x2 := c.Op("Mul", vals(x, x))
	var d *graph.Value
	switch approx {
	case "none":
		invSqrt2, err := k(1 / math.Sqrt2)
		if err != nil {
			return nil, err
		}
		invSqrt2Pi, err := k(1 / math.Sqrt(2*math.Pi))
		if err != nil {
			return nil, err
		}
		cdf := c.Op("Mul", vals(half, c.Op("Add", vals(one, c.Op("Erf", vals(c.Op("Mul", vals(x, invSqrt2))))))))
		pdf := c.Op("Mul", vals(invSqrt2Pi, c.Op("Exp", vals(c.Op("Neg", vals(c.Op("Mul", vals(x2, half))))))))
		d = c.Op("Add", vals(cdf, c.Op("Mul", vals(x, pdf))))
	case "tanh":
		kk, err := k(math.Sqrt(2 / math.Pi))
		if err != nil {
			return nil, err
		}
		a, err := k(0.044715)
		if err != nil {
			return nil, err
		}
		a3, err := k(3 * 0.044715)
		if err != nil {
			return nil, err
		}
		u := c.Op("Mul", vals(kk, c.Op("Add", vals(x, c.Op("Mul", vals(a, c.Op("Mul", vals(x2, x))))))))
		t := c.Op("Tanh", vals(u))
		du := c.Op("Mul", vals(kk, c.Op("Add", vals(one, c.Op("Mul", vals(a3, x2))))))
		sech2 := c.Op("Sub", vals(one, c.Op("Mul", vals(t, t))))
		d = c.Op("Add", vals(
			c.Op("Mul", vals(half, c.Op("Add", vals(one, t)))),
			c.Op("Mul", vals(c.Op("Mul", vals(half, x)), c.Op("Mul", vals(sech2, du))))))
	default:
		return nil, fmt.Errorf("unknown approximate=%q (want none or tanh)", approx)
	}
	return vals(c.Op("Mul", vals(gys[0], d))), nil
}

// y = |x|: dx = gy·sign(x) (0 at x = 0, as PyTorch).
func gradAbs(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	return vals(c.Op("Mul", vals(gys[0], c.Op("Sign", vals(n.Input(0)))))), nil
}

// Clip passes gy where min ≤ x ≤ max (bounds inclusive, as PyTorch's
// clamp). The bounds are attributes before opset 11 and optional inputs
// from 11; a bound input that needs a gradient gets gy where x is beyond
// it, summed to its shape.
func gradClip(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x, gy := n.Input(0), gys[0]
	var lo, hi *graph.Value
	var err error
	if c.Opset < 11 {
		if a := n.Attr("min"); a != nil {
			if lo, err = c.Scalar(float64(a.F), x); err != nil {
				return nil, err
			}
		}
		if a := n.Attr("max"); a != nil {
			if hi, err = c.Scalar(float64(a.F), x); err != nil {
				return nil, err
			}
		}
	} else {
		lo, hi = n.Input(1), n.Input(2)
	}
	out := make([]*graph.Value, 3)
	// Not(Less) and Not(Greater) rather than GreaterOrEqual/LessOrEqual,
	// which only exist from opset 12.
	var mask *graph.Value
	if lo != nil {
		below := c.Op("Less", vals(x, lo))
		mask = c.Op("Not", vals(below))
		if c.Opset >= 11 && c.needs(1) {
			g, err := c.where0(below, gy)
			if err != nil {
				return nil, err
			}
			out[1] = c.unbroadcast(g, lo)
		}
	}
	if hi != nil {
		above := c.Op("Greater", vals(x, hi))
		in := c.Op("Not", vals(above))
		if mask == nil {
			mask = in
		} else {
			mask = c.Op("And", vals(mask, in))
		}
		if c.Opset >= 11 && c.needs(2) {
			g, err := c.where0(above, gy)
			if err != nil {
				return nil, err
			}
			out[2] = c.unbroadcast(g, hi)
		}
	}
	if mask == nil {
		out[0] = gy
		return out, nil
	}
	if out[0], err = c.where0(mask, gy); err != nil {
		return nil, err
	}
	return out, nil
}

// Dropout is the identity in inference mode, the only mode supported:
// a training_mode input must be a constant false.
func gradDropout(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if tm := n.Input(2); tm != nil {
		var raw []byte
		if t := graph.ConstTensor(tm); t != nil && t.DType == graph.Bool {
			raw, _ = t.Bytes()
		}
		if len(raw) != 1 || raw[0] != 0 {
			return nil, fmt.Errorf("training-mode Dropout is not supported (training_mode %q is not a constant false)", tm.Name)
		}
	}
	return vals(gys[0]), nil
}

// Max and Min (elementwise, variadic, broadcasting): gy goes to the
// inputs equal to the result, split evenly among ties — PyTorch's
// convention for torch.maximum/minimum (each gets gy/2 on a tie of two).
func gradMaxMin(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, y := gys[0], n.Output(0)
	k := n.NumInputs()
	if k == 1 {
		return vals(gy), nil
	}
	masks := make([]*graph.Value, k)
	for i := range k {
		m, err := c.CastTo(c.Op("Equal", vals(n.Input(i), y)), y)
		if err != nil {
			return nil, err
		}
		masks[i] = m
	}
	share := c.Op("Div", vals(gy, c.Op("Sum", masks)))
	out := make([]*graph.Value, k)
	for i := range k {
		if c.needs(i) {
			out[i] = c.unbroadcast(c.Op("Mul", vals(share, masks[i])), n.Input(i))
		}
	}
	return out, nil
}

// Where(cond, x, y): x gets gy where cond holds, y elsewhere; each is
// summed back to its own shape. cond gets nothing.
func gradWhere(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, cond := gys[0], n.Input(0)
	zero, err := c.Scalar(0, gy)
	if err != nil {
		return nil, err
	}
	out := make([]*graph.Value, 3)
	if c.needs(1) {
		out[1] = c.unbroadcast(c.Op("Where", vals(cond, gy, zero)), n.Input(1))
	}
	if c.needs(2) {
		out[2] = c.unbroadcast(c.Op("Where", vals(cond, zero, gy)), n.Input(2))
	}
	return out, nil
}

// Cast: the gradient is cast back to the input's float type; an integer
// or bool input gets none.
func gradCast(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x := n.Input(0)
	if isDiscrete(c.Inf.DType(x)) {
		return vals(nil), nil
	}
	g, err := c.CastTo(gys[0], x)
	if err != nil {
		return nil, err
	}
	return vals(g), nil
}

// CastLike(x, like): like Cast; the template input gets nothing.
func gradCastLike(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	g, err := gradCast(c, n, gys)
	if err != nil {
		return nil, err
	}
	return vals(g[0], nil), nil
}
