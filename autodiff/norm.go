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
func (c *gradCtx) softmaxAxes(n *graph.Node) ([]int64, error) {
	if c.Opset >= 13 {
		return []int64{n.AttrInt("axis", -1)}, nil
	}
	r, err := c.rank(n.Input(0))
	if err != nil {
		return nil, err
	}
	a, err := graph.NormAxis(n.AttrInt("axis", 1), r)
	if err != nil {
		return nil, err
	}
	return iota64(a, int64(r)), nil
}

// y = softmax(x): dx = y·(gy − Σ gy·y).
func gradSoftmax(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, y := gys[0], n.Output(0)
	axes, err := c.softmaxAxes(n)
	if err != nil {
		return nil, err
	}
	s := c.ReduceSum(c.Op("Mul", vals(gy, y)), axes, true)
	return vals(c.Op("Mul", vals(y, c.Op("Sub", vals(gy, s))))), nil
}

// y = log softmax(x): dx = gy − e^y·Σ gy.
func gradLogSoftmax(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, y := gys[0], n.Output(0)
	axes, err := c.softmaxAxes(n)
	if err != nil {
		return nil, err
	}
	s := c.ReduceSum(gy, axes, true)
	return vals(c.Op("Sub", vals(gy, c.Op("Mul", vals(c.Op("Exp", vals(y)), s))))), nil
}

// LayerNormalization (opset 17): over the axes from axis on,
// x̂ = (x − μ)·ρ with ρ = 1/√(σ² + ε), Y = x̂·Scale + B, and optional
// outputs Mean = μ and InvStdDev = ρ. The rule recomputes μ, ρ and x̂ in
// x's type instead of reading the optional outputs, which the exporter
// usually omits (for fp16 inputs with stash_type=1 ORT keeps them in fp32;
// the recomputation is then in fp16).
//
//	dB     = Σ gY                 (over the leading axes)
//	dScale = Σ gY·x̂
//	dx     = ρ·(g − mean g − x̂·mean(g·x̂)),  g = gY·Scale
//	       + gMean/N − gInvStdDev·ρ³·(x − μ)/N
func gradLayerNorm(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	x, scale, bias := n.Input(0), n.Input(1), n.Input(2)
	axis := n.AttrInt("axis", -1)
	var axes []int64
	if axis < 0 {
		axes = iota64(axis, 0) // [axis, ..., −1]: no rank needed
	} else {
		r, err := c.rank(x)
		if err != nil {
			return nil, err
		}
		axes = iota64(axis, int64(r))
	}
	out := make([]*graph.Value, 3)
	gy := gys[0]
	if gy != nil && bias != nil && c.needs(2) {
		out[2] = c.unbroadcast(gy, bias)
	}
	if !c.needs(0) && !c.needs(1) {
		return out, nil // dB needs no statistics
	}
	eps, err := c.Scalar(float64(n.AttrFloat("epsilon", 1e-5)), x)
	if err != nil {
		return nil, err
	}
	mu := c.ReduceMean(x, axes)
	xc := c.Op("Sub", vals(x, mu))
	variance := c.ReduceMean(c.Op("Mul", vals(xc, xc)), axes)
	rho := c.Op("Reciprocal", vals(c.Op("Sqrt", vals(c.Op("Add", vals(variance, eps))))))
	xhat := c.Op("Mul", vals(xc, rho))
	if gy != nil && c.needs(1) {
		out[1] = c.unbroadcast(c.Op("Mul", vals(gy, xhat)), scale)
	}
	if !c.needs(0) {
		return out, nil
	}
	var terms []*graph.Value
	if gy != nil {
		g := c.Op("Mul", vals(gy, scale))
		m1 := c.ReduceMean(g, axes)
		m2 := c.ReduceMean(c.Op("Mul", vals(g, xhat)), axes)
		inner := c.Op("Sub", vals(c.Op("Sub", vals(g, m1)), c.Op("Mul", vals(xhat, m2))))
		terms = append(terms, c.Op("Mul", vals(rho, inner)))
	}
	var gMean, gRho *graph.Value
	if len(gys) > 1 {
		gMean = gys[1]
	}
	if len(gys) > 2 {
		gRho = gys[2]
	}
	if gMean != nil || gRho != nil {
		// 1/N, N = elements per normalized group = size(x)/size(μ).
		dt := int64(c.Inf.DType(x))
		if dt == 0 {
			dt = int64(graph.Float)
		}
		invN := c.Op("Div", vals(
			c.Op("Cast", vals(c.Op("Size", vals(mu))), graph.AttrI("to", dt)),
			c.Op("Cast", vals(c.Op("Size", vals(x))), graph.AttrI("to", dt))))
		if gMean != nil {
			gm, err := c.CastTo(gMean, x)
			if err != nil {
				return nil, err
			}
			// Expand: this term alone must already have x's shape.
			terms = append(terms, c.Op("Expand", vals(c.Op("Mul", vals(gm, invN)), c.Shape(x))))
		}
		if gRho != nil {
			gr, err := c.CastTo(gRho, x)
			if err != nil {
				return nil, err
			}
			rho3 := c.Op("Mul", vals(rho, c.Op("Mul", vals(rho, rho))))
			terms = append(terms, c.Op("Neg", vals(c.Op("Mul", vals(c.Op("Mul", vals(gr, rho3)), c.Op("Mul", vals(xc, invN)))))))
		}
	}
	switch len(terms) {
	case 0:
	case 1:
		out[0] = terms[0]
	default:
		out[0] = c.Op("Sum", terms)
	}
	return out, nil
}
