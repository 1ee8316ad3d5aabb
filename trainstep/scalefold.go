package trainstep

import (
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// scalePastProducts is fuse-cuda's scale-past-matmul: Y = X·c, with c a
// scalar constant and every reader of Y a MatMul, becomes the products of
// X each scaled afterwards, (X·B)·c, when the products are smaller than Y
// together. The attention's backward has that shape: the softmax
// gradient dS scaled by 1/√d (the forward's scale, differentiated) feeds
// dQ = dS'·K and dK = dS'ᵀ·Q, so the scale was a pass over a [.., T, T]
// tensor; after the push it is one over two [.., T, D] tensors, which
// ONNX Runtime's MatMulScaleFusion folds into FusedMatMul's alpha (its
// input-side fusion needs a scale read by that one product). The same
// products in exact arithmetic; rounded once more or less in another
// place (a scale by a power of two, as 1/√128 is not, is exact either
// way).
func scalePastProducts(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	b := opb.New(m, "fuse_cuda", "fuse_cuda", inf)
	elems := func(v *graph.Value) int64 {
		d, ok := staticDims(inf, v)
		if !ok {
			return -1
		}
		return product(d)
	}
	count := 0
	for _, mul := range slices.Clone(g.Nodes) {
		if mul.Op != "Mul" || mul.Domain != "" || mul.Graph() == nil || mul.NumInputs() != 2 {
			continue
		}
		y := mul.Output(0)
		var x, c *graph.Value
		for i := range 2 {
			if t := graph.ConstTensor(mul.Input(i)); t != nil {
				if n, err := t.NumElements(); err == nil && n == 1 {
					x, c = mul.Input(1-i), mul.Input(i)
				}
			}
		}
		if x == nil || y.IsGraphOutput() || graph.ConstTensor(x) != nil || inf.DType(x) != inf.DType(y) {
			continue
		}
		uses := y.Uses()
		ny := elems(y)
		if len(uses) == 0 || ny <= 0 {
			continue
		}
		var products int64
		ok := true
		for _, u := range uses {
			mm := u.Node
			if mm.Op != "MatMul" || mm.Domain != "" || mm.Input(0) == mm.Input(1) || mm.Output(0).IsGraphOutput() {
				ok = false
				break
			}
			nz := elems(mm.Output(0))
			if nz <= 0 {
				ok = false
				break
			}
			products += nz
		}
		if !ok || products >= ny {
			continue
		}
		for _, u := range uses {
			mm := u.Node
			z := mm.Output(0)
			readers := z.Uses()
			mm.SetInput(u.Index, x)
			scaled := b.Mul(z, c)
			if err := b.Err(); err != nil {
				return count, err
			}
			for _, r := range readers {
				r.Node.SetInput(r.Index, scaled)
			}
		}
		count++
	}
	return count, b.Err()
}
