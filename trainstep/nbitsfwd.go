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
		if dt := inf.DType(a); inf.DType(w) != dt {
			w = b.Cast(w, dt)
		}
		y := b.MatMul(a, b.Transpose(w, 1, 0))
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
