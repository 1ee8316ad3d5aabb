package autodiff

// Gradient rules for arithmetic, matrix products and pointwise functions.

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

func vals(vs ...*graph.Value) []*graph.Value { return vs }

func gradIdentity(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	return vals(gys[0]), nil
}

func gradAdd(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy := gys[0]
	out := make([]*graph.Value, 2)
	for i := range 2 {
		if c.needs(i) {
			out[i] = c.unbroadcast(gy, n.Input(i))
		}
	}
	return out, nil
}

// gradSumOp is Add's rule for the variadic Sum.
func gradSumOp(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	out := make([]*graph.Value, n.NumInputs())
	for i := range out {
		if c.needs(i) {
			out[i] = c.unbroadcast(gys[0], n.Input(i))
		}
	}
	return out, nil
}

func gradSub(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy := gys[0]
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		out[0] = c.unbroadcast(gy, n.Input(0))
	}
	if c.needs(1) {
		out[1] = c.unbroadcast(c.Op("Neg", vals(gy)), n.Input(1))
	}
	return out, nil
}

func gradMul(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		out[0] = c.unbroadcast(c.Op("Mul", vals(gy, b)), a)
	}
	if c.needs(1) {
		out[1] = c.unbroadcast(c.Op("Mul", vals(gy, a)), b)
	}
	return out, nil
}

// y = a / b: da = gy / b, db = -gy · y / b.
func gradDiv(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, a, b, y := gys[0], n.Input(0), n.Input(1), n.Output(0)
	out := make([]*graph.Value, 2)
	ga := c.Op("Div", vals(gy, b))
	if c.needs(0) {
		out[0] = c.unbroadcast(ga, a)
	}
	if c.needs(1) {
		out[1] = c.unbroadcast(c.Op("Neg", vals(c.Op("Mul", vals(ga, y)))), b)
	}
	return out, nil
}

func gradNeg(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	return vals(c.Op("Neg", vals(gys[0]))), nil
}

// swapLast transposes the last two axes of x.
func (c *gradCtx) swapLast(x *graph.Value) (*graph.Value, error) {
	r, err := c.rank(x)
	if err != nil {
		return nil, err
	}
	if r < 2 {
		return nil, fmt.Errorf("%q has rank %d; MatMul gradients need rank ≥ 2", x.Name, r)
	}
	perm := make([]int64, r)
	for i := range perm {
		perm[i] = int64(i)
	}
	perm[r-1], perm[r-2] = perm[r-2], perm[r-1]
	return c.Op("Transpose", vals(x), graph.AttrIs("perm", perm...)), nil
}

// flatten2 reshapes x to [-1, last dim]: the rows of a batched product.
func (c *gradCtx) flatten2(x *graph.Value) *graph.Value {
	if c.Inf.Rank(x) == 2 {
		return x
	}
	last := c.Op("Slice", vals(c.Shape(x), c.Ints(-1), c.Ints(math.MaxInt64)))
	if c.Opset < 10 {
		last = c.Op("Slice", vals(c.Shape(x)), graph.AttrIs("starts", -1), graph.AttrIs("ends", math.MaxInt32), graph.AttrIs("axes", 0))
	}
	return c.Op("Reshape", vals(x, c.Op("Concat", vals(c.Ints(-1), last), graph.AttrI("axis", 0))))
}

// y = a @ b (numpy semantics, ranks ≥ 2): da = gy @ bᵀ, db = aᵀ @ gy,
// each summed over broadcast batch axes. When b is a matrix — every LoRA
// branch and projection — db is one GEMM over all rows of the batch
// (Gemm with transA on the flattened a and gy) instead of a batched
// product followed by a sum.
func gradMatMul(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		bt, err := c.swapLast(b)
		if err != nil {
			return nil, err
		}
		out[0] = c.unbroadcast(c.Op("MatMul", vals(gy, bt)), a)
	}
	if c.needs(1) {
		if c.Inf.Rank(b) == 2 {
			out[1] = c.Gemm(c.flatten2(a), c.flatten2(gy), graph.AttrI("transA", 1))
		} else {
			at, err := c.swapLast(a)
			if err != nil {
				return nil, err
			}
			out[1] = c.unbroadcast(c.Op("MatMul", vals(at, gy)), b)
		}
	}
	return out, nil
}

// y = alpha·op(A)·op(B) + beta·C with op = transpose when transA/transB.
func gradGemm(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	alpha := n.AttrFloat("alpha", 1)
	beta := n.AttrFloat("beta", 1)
	ta, tb := n.AttrInt("transA", 0) != 0, n.AttrInt("transB", 0) != 0
	out := make([]*graph.Value, 3)
	scaled := func(v *graph.Value, s float32) (*graph.Value, error) {
		if s == 1 {
			return v, nil
		}
		k, err := c.Scalar(float64(s), v)
		if err != nil {
			return nil, err
		}
		return c.Op("Mul", vals(v, k)), nil
	}
	gemm := func(x, y *graph.Value, tx, ty bool) *graph.Value {
		return c.Gemm(x, y, graph.AttrI("transA", boolInt(tx)), graph.AttrI("transB", boolInt(ty)), graph.AttrF("alpha", alpha))
	}
	if c.needs(0) {
		// dA = gy·op(B)ᵀ, transposed back when transA.
		if ta {
			out[0] = gemm(b, gy, tb, true)
		} else {
			out[0] = gemm(gy, b, false, !tb)
		}
	}
	if c.needs(1) {
		if tb {
			out[1] = gemm(gy, a, true, ta)
		} else {
			out[1] = gemm(a, gy, !ta, false)
		}
	}
	if n.NumInputs() > 2 && c.needs(2) {
		g, err := scaled(gy, beta)
		if err != nil {
			return nil, err
		}
		out[2] = c.unbroadcast(g, n.Input(2))
	}
	return out, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
