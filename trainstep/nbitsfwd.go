package trainstep

import (
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/internal/quant"
)

// dequantizedProducts is fuse-cuda's nbits-dequant: a forward MatMulNBits
// (Y = A·Wᵀ with W packed in 2, 4 or 8 bits) whose A has at least
// nbitsMinRows rows becomes W dequantized while the step runs
// (quant.DequantizeOp, as its gradient already is) and one GEMM,
// A·Wᵀ. ONNX Runtime's CUDA MatMulNBits is built for decoding, a few
// rows at a time; a training step's A has batch × length rows (2,048 on
// the 7B at 4 × 512), for which the dequantized weight in a tensor-core
// GEMM is the faster product (the int4 7B step ran at 0.29× the bf16
// one's speed with MatMulNBits, docs/gpu-benchmarks.md §3h). The weight
// stays packed between steps: the float W of one product lives only next
// to it (the dequantization waits on A's first element, so ONNX Runtime
// neither runs it early nor folds it into a constant, and it differs from
// the backward's, which waits on dY, so the two are not merged). The same
// product up to the order of its sums.
//
// The GEMM is a 2-D Gemm with transB rather than MatMul of a transposed
// W, so Wᵀ is never written. Under bfloat16 with a weight dequantized
// through float16 (quant.DequantizeOp), the forward product runs in
// float16 on A cast to it — W is then read as the dequantization wrote it,
// with no cast of the [N, K] weight — and its output is cast back. A
// bfloat16 activation converts to float16 exactly below 65,504 in
// magnitude and at most loses bits below 2⁻¹⁴ (a step's A is a normalised
// hidden state or an MLP activation); the product accumulates in float32
// and rounds to float16's 11 bits before bfloat16's 8. The backward keeps
// bfloat16 (gradients can be far below float16's range).
func dequantizedProducts(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	b := opb.New(m, "fuse_cuda", "fuse_cuda", inf)
	count := 0
	for _, n := range slices.Clone(g.Nodes) {
		if n.Op != "MatMulNBits" || n.Domain != "com.microsoft" || n.Graph() == nil {
			continue
		}
		if n.NumInputs() > 5 && n.Input(5) != nil {
			continue // a bias input: left to the fused kernel
		}
		q, _ := quant.FromNBits(n)
		if q == nil || !quant.RunTimeBits(q.Bits) {
			continue
		}
		a := n.Input(0)
		ad, ok := staticDims(inf, a)
		if !ok || len(ad) < 2 || product(ad[:len(ad)-1]) < nbitsMinRows {
			continue
		}
		after := b.Cast(b.Slice(b.Reshape(a, b.Ints(-1)), 0, 1, 0), graph.Bool)
		w := q.DequantizeOp(b, n, after) // [N, K]
		dt := inf.DType(a)
		rows := b.Ints(-1, q.K)
		back := b.Ints(append(slices.Clone(ad[:len(ad)-1]), q.N)...)
		var y *graph.Value
		if w16 := halfWeight(inf, w); w16 != nil && dt == graph.BFloat16 {
			y = b.Cast(b.Reshape(b.Gemm(b.Cast(b.Reshape(a, rows), graph.Float16), w16, graph.AttrI("transB", 1)), back), dt)
		} else {
			if inf.DType(w) != dt {
				w = b.Cast(w, dt)
			}
			if dt == graph.Float || dt == graph.Float16 { // Gemm's CUDA kernel types
				y = b.Reshape(b.Gemm(b.Reshape(a, rows), w, graph.AttrI("transB", 1)), back)
			} else {
				y = b.MatMul(a, b.Transpose(w, 1, 0))
			}
		}
		if err := b.Err(); err != nil {
			return count, err
		}
		if err := replaceNode(g, n, y); err != nil {
			return count, err
		}
		count++
	}
	return count, nil
}

// nbitsMinRows is the fewest rows of A for which dequantizedProducts
// replaces MatMulNBits: below it, the kernel's decoding path (one row at
// a time, no float copy of W) is the better product.
const nbitsMinRows = 16

// halfWeight is the float16 weight a bfloat16 one is cast from
// (quant.DequantizeOp's float16 form), or nil.
func halfWeight(inf *infer.Inferer, w *graph.Value) *graph.Value {
	p, _ := w.Producer()
	if p == nil || p.Op != "Cast" || p.Domain != "" || p.Input(0) == nil || inf.DType(p.Input(0)) != graph.Float16 {
		return nil
	}
	return p.Input(0)
}
