package autodiff

// Gradient rule for com.microsoft's MatMulNBits, the quantized matrix
// product of ORT's int4 exports.

import (
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/quant"
)

// gradMatMulNBits: Y = A·Wᵀ with W [N, K] frozen, so dA = dY·W. W is
// dequantized when the training graph is compiled and kept as a float
// constant [N, K] for the backward product: exact, at the cost of a float
// copy of each such weight in the training graph (the forward keeps the
// packed kernel).
func gradMatMulNBits(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if !c.needs(0) {
		return make([]*graph.Value, n.NumInputs())
	}
	q, reason := quant.FromNBits(n)
	if q == nil {
		return c.failf("cannot differentiate: %s", reason)
	}
	w, err := q.Dequantize() // [K, N]
	if err != nil {
		return c.failf("%w", err)
	}
	wt := make([]float32, len(w)) // [N, K]
	for k := int64(0); k < q.K; k++ {
		for j := int64(0); j < q.N; j++ {
			wt[j*q.K+k] = float32(w[k*q.N+j])
		}
	}
	t, err := graph.NewFloatTensor(n.Input(1).Name+".dequantized", q.Scales.DType, []int64{q.N, q.K}, wt)
	if err != nil {
		return c.failf("%w", err)
	}
	wv := c.G.Root().AddInitializer(t)
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.MatMul(gys[0], wv)
	return out
}
