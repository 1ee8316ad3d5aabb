package autodiff

// Gradient rule for com.microsoft's MatMulNBits, the quantized matrix
// product of ORT's int4 exports.

import (
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/quant"
)

// gradMatMulNBits: Y = A·Wᵀ with W [N, K] frozen, so dA = dY·W.
//
// W is dequantized while the step runs, from the node's own packed
// weight, next to the product (quant.DequantizeOp): the step keeps only
// the packed weight, as the forward does, and one layer's float W at a
// time — QLoRA's memory (a float copy made at compile time would take
// 4 or 2 bytes a weight beside the packed half byte). The dequantization
// waits on dY (its first element, cast to a boolean, selects between two
// equal inputs), so it cannot run before the backward reaches the layer
// and ONNX Runtime cannot fold it into a float constant.
func gradMatMulNBits(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if !c.needs(0) {
		return make([]*graph.Value, n.NumInputs())
	}
	q, reason := quant.FromNBits(n)
	if q == nil {
		return c.failf("cannot differentiate: %s", reason)
	}
	if !quant.RunTimeBits(q.Bits) {
		return c.failf("cannot differentiate bits=%d: training unpacks 2-, 4- or 8-bit codes (those ONNX Runtime's kernel runs)", q.Bits)
	}
	after := c.Cast(c.Slice(c.Reshape(gys[0], c.Ints(-1)), 0, 1, 0), graph.Bool)
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.MatMul(gys[0], q.DequantizeOp(c.Builder, n, after))
	return out
}
