package autodiff

// Gradient rules for arithmetic and matrix products. The broadcasting
// ops (Add, Sum, Sub, Mul, Div) return output-shaped gradients; the
// driver sums them back to the inputs' shapes.

import (
	"math"

	"github.com/loracc/loracc/graph"
)

func vals(vs ...*graph.Value) []*graph.Value { return vs }

func gradIdentity(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(gys[0])
}

// y = a + b + ...: every input gets gy (Add and the variadic Sum).
func gradSum(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	out := make([]*graph.Value, n.NumInputs())
	for i := range out {
		if c.needs(i) {
			out[i] = gys[0]
		}
	}
	return out
}

// y = a − b: da = gy, db = −gy.
func gradSub(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy := gys[0]
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		out[0] = gy
	}
	if c.needs(1) {
		out[1] = c.Neg(gy)
	}
	return out
}

// y = a·b: da = gy·b, db = gy·a.
func gradMul(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	out := make([]*graph.Value, 2)
	if xi, ok := c.silus[n]; ok { // y = x·σ(x): dx = gy·(σ + y·(1 − σ)) (findSiLUs)
		s, y := n.Input(1-xi), n.Output(0)
		out[xi] = c.Mul(gy, c.Add(s, c.Mul(y, c.Sub(c.K(1, s), s))))
		return out
	}
	if c.needs(0) {
		out[0] = c.Mul(gy, b)
	}
	if c.needs(1) {
		out[1] = c.Mul(gy, a)
	}
	return out
}

// y = a / b: da = gy / b, db = −(gy / b)·y.
func gradDiv(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, b, y := gys[0], n.Input(1), n.Output(0)
	out := make([]*graph.Value, 2)
	ga := c.Div(gy, b)
	if c.needs(0) {
		out[0] = ga
	}
	if c.needs(1) {
		out[1] = c.Neg(c.Mul(ga, y))
	}
	return out
}

func gradNeg(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	return vals(c.Neg(gys[0]))
}

// swapLast transposes the last two axes of x.
func (c *gradCtx) swapLast(x *graph.Value) *graph.Value {
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	if r < 2 {
		c.failf("%q has rank %d; MatMul gradients need rank ≥ 2", x.Name, r)
		return nil
	}
	perm := iota64(0, int64(r))
	perm[r-1], perm[r-2] = perm[r-2], perm[r-1]
	return c.Transpose(x, perm...)
}

// unflatten reshapes the rows x of a batched product back to like's
// shape (like has x's element count).
func (c *gradCtx) unflatten(x, like *graph.Value) *graph.Value {
	if c.Inf.Rank(like) == 2 {
		return x
	}
	return c.Reshape(x, c.Shape(like))
}

// flatten2 reshapes x to [-1, last dim]: the rows of a batched product.
func (c *gradCtx) flatten2(x *graph.Value) *graph.Value {
	if c.Inf.Rank(x) == 2 {
		return x
	}
	if k := c.lastDim(x); k >= 0 {
		return c.Reshape(x, c.Ints(-1, k))
	}
	var last *graph.Value
	if c.Opset < 10 {
		last = c.Op("Slice", vals(c.Shape(x)), graph.AttrIs("starts", -1), graph.AttrIs("ends", math.MaxInt32), graph.AttrIs("axes", 0))
	} else {
		last = c.SliceT(c.Shape(x), c.Ints(-1), c.Ints(math.MaxInt64))
	}
	return c.Reshape(x, c.Concat(0, c.Ints(-1), last))
}

// y = a @ b (numpy semantics, ranks ≥ 2): da = gy @ bᵀ, db = aᵀ @ gy,
// each summed over broadcast batch axes (by the driver). When b is a
// matrix — every LoRA branch and projection — db is one GEMM over all
// rows of the batch (weightGrad, on the flattened a and gy) instead of a
// batched product followed by a sum, and da is one GEMM with transB:
// no Transpose of b, which ONNX Runtime's constant folding would turn into
// a second, transposed copy of every frozen weight (twice the weights'
// memory on the device).
func gradMatMul(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	out := make([]*graph.Value, 2)
	if c.needs(0) {
		if c.Inf.Rank(b) == 2 {
			out[0] = c.unflatten(c.Gemm(c.flatten2(gy), b, graph.AttrI("transB", 1)), a)
		} else {
			out[0] = c.MatMul(gy, c.swapLast(b))
		}
	}
	if c.needs(1) {
		if c.Inf.Rank(b) == 2 {
			out[1] = c.weightGrad(c.flatten2(a), c.flatten2(gy))
		} else {
			out[1] = c.MatMul(c.swapLast(a), gy)
		}
	}
	return out
}

// weightGrad is aᵀ·gy for the rows a [m, k] and gy [m, n] of a product
// with a matrix. When gy is the narrower (a LoRA A's gradient: n is the
// rank), it is computed as (gyᵀ·a)ᵀ: ONNX Runtime's CPU GEMM (MLAS) copies
// a transposed left operand into its packed buffer, so aᵀ·gy copies all
// of a — written by the forward long before, no longer in cache — in
// transposed order, while gyᵀ·a copies only the narrow gy and reads a row
// by row (measured on the tiny GPT-2's step: the eight A gradients about
// twice as fast). MatMul on an explicit Transpose, not Gemm with transA:
// ORT's GemmTransposeFusion turns Transpose(Gemm(gy, a, transA)) back
// into Gemm(a, gy, transA); its MatmulTransposeFusion folds the inner
// Transpose into FusedMatMul and leaves the outer one.
func (c *gradCtx) weightGrad(a, gy *graph.Value) *graph.Value {
	if kg := c.lastDim(gy); !c.opts.NoNarrowWeightGrads && kg >= 0 && kg < c.lastDim(a) {
		return c.Transpose(c.MatMul(c.Transpose(gy, 1, 0), a), 1, 0)
	}
	return c.Gemm(a, gy, graph.AttrI("transA", 1))
}

// lastDim is x's last dimension when known, else -1.
func (c *gradCtx) lastDim(x *graph.Value) int64 {
	if d := c.Inf.Info(x).Dims; len(d) > 0 && d[len(d)-1].Known() {
		return d[len(d)-1].Value
	}
	return -1
}

// y = alpha·op(A)·op(B) + beta·C with op = transpose when transA/transB:
// dA = alpha·gy·op(B)ᵀ (transposed back when transA), dB likewise,
// dC = beta·gy (summed to C's shape by the driver).
func gradGemm(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gy, a, b := gys[0], n.Input(0), n.Input(1)
	alpha := n.AttrFloat("alpha", 1)
	beta := n.AttrFloat("beta", 1)
	ta, tb := n.AttrInt("transA", 0) != 0, n.AttrInt("transB", 0) != 0
	out := make([]*graph.Value, n.NumInputs())
	gemm := func(x, y *graph.Value, tx, ty bool) *graph.Value {
		return c.Gemm(x, y, graph.AttrI("transA", boolInt(tx)), graph.AttrI("transB", boolInt(ty)), graph.AttrF("alpha", alpha))
	}
	if c.needs(0) {
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
		out[2] = gy
		if beta != 1 {
			out[2] = c.Mul(gy, c.K(float64(beta), gy))
		}
	}
	return out
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
