package trainstep

// Pass "products".
//
// Pre:  the last pass that writes matrix products has run (autodiff,
//       fuse-cuda, unroll).
// Post: for any target but "cuda" (Options.Target), in standard ONNX:
//   narrow-grad — a weight gradient Gemm(x, h, transA=1) whose h is
//       narrow (≤ 16 columns, x at least twice as wide: a LoRA A's
//       [in, r] gradient xᵀ·h) is computed as (hᵀ·x)ᵀ,
//       Transpose(MatMul(Transpose(h), x));
//   lora-dx — the input gradient of a LoRA linear layer, g·Wᵀ +
//       (g·Bᵀ)·Aᵀ (frozen W [in, out], the branch's A and B with its
//       scale folded into B), is computed as g·W′ᵀ with W′ = W + A·B, one
//       product where there were two, when the batch has more rows than W
//       has columns (then the [in, out] W′ costs less than the [rows, in]
//       partial gradient it replaces); float32 only (a bfloat16 W′ would
//       round the adapter's update away).
//
// Why: ONNX Runtime's CPU GEMM (MLAS) copies a transposed A operand into
// a packed buffer, which for xᵀ·h is all of x ([tokens, in]) to produce
// an [in, r] result; hᵀ·x copies only h, and the transposed result has
// in·r elements. ORT fuses the inner Transpose into the product
// (FusedMatMul) and keeps the outer one (its GemmTransposeFusion would
// undo a Transpose of a Gemm, which is why the form is not a Gemm).
// lora-dx: the [rows, in] gradient through the branch was written and
// read back (by the sum) per target per step; W′ is [in, out]. The
// branch's g·Bᵀ stays: A's gradient needs it. Measured on the tiny GPT-2
// step (CPU, one thread, the three graphs' runs interleaved 200 times,
// five runs): train/eval 2.48 without either, 2.42 with narrow-grad,
// 2.46 with lora-dx, 2.33 with both. On CUDA both are unmeasured (cuBLAS
// reads transposed operands in place), so left out there.
//
// Numerics: the same dot products; the GEMM kernel may sum them in
// another order (float rounding). lora-dx adds A·B to W before the
// product instead of after it: float32 rounding of W′ (relative 6e-8 of
// |W|).

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// Products is pass "products".
func (st *Compiler) Products(m *graph.Model) error {
	if st.opts.Target == "cuda" {
		return nil
	}
	inf := infer.New()
	narrow, merged := 0, 0
	if st.enabled("narrow-grad") {
		var err error
		if narrow, err = narrowWeightGrads(m, inf); err != nil {
			return err
		}
	}
	if st.enabled("lora-dx") {
		var err error
		if merged, err = mergeLoRAInputGrads(m, inf); err != nil {
			return err
		}
	}
	if narrow+merged == 0 {
		return nil
	}
	st.logf("products: %d narrow weight gradients as (hᵀ·x)ᵀ, %d LoRA input gradients through W + A·B", narrow, merged)
	if _, err := m.Graph.Prune(); err != nil {
		return err
	}
	return m.Graph.SortTopo()
}

// narrowWeightGrads rewrites Gemm(x, h, transA=1) with narrow h as
// Transpose(MatMul(Transpose(h), x)) and returns how many it rewrote.
func narrowWeightGrads(m *graph.Model, inf *infer.Inferer) (int, error) {
	g, count := m.Graph, 0
	for _, n := range slices.Clone(g.Nodes) {
		if n.Op != "Gemm" || n.Domain != "" || n.NumInputs() != 2 || n.AttrInt("transA", 0) != 1 || n.AttrInt("transB", 0) != 0 {
			continue
		}
		x, h := n.Input(0), n.Input(1)
		if inf.DType(x) != graph.Float || inf.DType(h) != graph.Float || n.Output(0).IsGraphOutput() {
			continue
		}
		dx, dh := inf.Info(x).Dims, inf.Info(h).Dims
		if len(dx) != 2 || len(dh) != 2 || !dx[1].Known() || !dh[1].Known() {
			continue
		}
		if r, in := dh[1].Value, dx[1].Value; r > 16 || in < 2*r {
			continue
		}
		b := opb.New(m, n.Name+"/narrow", n.Output(0).Name, inf)
		prod := b.Op("MatMul", []*graph.Value{b.Transpose(h, 1, 0), x})
		if alpha := n.AttrFloat("alpha", 1); alpha != 1 {
			prod = b.Mul(prod, b.K(float64(alpha), prod))
		}
		y := b.Transpose(prod, 1, 0)
		if err := b.Err(); err != nil {
			return count, fmt.Errorf("products: node %q (Gemm): %w", n.Name, err)
		}
		old := n.Output(0)
		name, typ := old.Name, old.Type
		old.ReplaceAllUsesWith(y)
		if err := g.RemoveNode(n); err != nil {
			return count, fmt.Errorf("products: node %q (Gemm): %w", n.Name, err)
		}
		if err := y.Rename(name); err != nil {
			return count, fmt.Errorf("products: node %q (Gemm): %w", n.Name, err)
		}
		y.Type = typ
		count++
	}
	return count, nil
}

// mergeLoRAInputGrads rewrites the pairs g·Wᵀ, (g·Bᵀ)·Aᵀ among a
// gradient sum's terms as g·(W + A·B)ᵀ and returns how many it merged.
func mergeLoRAInputGrads(m *graph.Model, inf *infer.Inferer) (int, error) {
	g, count := m.Graph, 0
	// plainGemm is v's producer when it is Gemm(a, b) with transB=1 and
	// nothing else (no C, alpha 1, a not transposed) on float32 rank-2
	// operands of known dims.
	plainGemm := func(v *graph.Value) *graph.Node {
		n := producerOp(v, "Gemm")
		if n == nil || n.NumInputs() != 2 || n.AttrInt("transA", 0) != 0 || n.AttrInt("transB", 0) != 1 || n.AttrFloat("alpha", 1) != 1 {
			return nil
		}
		for _, in := range n.Inputs() {
			if _, ok := staticDims(inf, in); !ok || inf.DType(in) != graph.Float || inf.Rank(in) != 2 {
				return nil
			}
		}
		return n
	}
	for _, sum := range slices.Clone(g.Nodes) {
		if (sum.Op != "Sum" && sum.Op != "Add") || sum.Domain != "" || sum.Graph() != g {
			continue
		}
		terms := sum.Inputs()
		changed := false
		for i := range terms {
			base := plainGemm(terms[i])
			if base == nil || graph.ConstTensor(base.Input(1)) == nil {
				continue
			}
			gy, w := base.Input(0), base.Input(1)
			rows, _ := staticDims(inf, gy)
			wd, _ := staticDims(inf, w)
			if rows[0] <= wd[1] {
				continue // W′ would cost more than the partial gradient
			}
			for j := range terms {
				br := plainGemm(terms[j])
				if j == i || terms[j] == nil || br == nil || terms[j].NumUses() != 1 || graph.ConstTensor(br.Input(1)) != nil {
					continue
				}
				hn := plainGemm(br.Input(0))
				if hn == nil || hn.Input(0) != gy || graph.ConstTensor(hn.Input(1)) != nil {
					continue
				}
				a, bm := br.Input(1), hn.Input(1)
				ad, _ := staticDims(inf, a)
				bd, _ := staticDims(inf, bm)
				if ad[0] != wd[0] || bd[1] != wd[1] || ad[1] != bd[0] {
					continue
				}
				b := opb.New(m, sum.Name+"/lora_dx", w.Name, inf)
				wp := b.Op("Gemm", []*graph.Value{a, bm, w})
				terms[i] = b.Gemm(gy, wp, graph.AttrI("transB", 1))
				terms[j] = nil
				if err := b.Err(); err != nil {
					return count, fmt.Errorf("products: node %q (%s): %w", sum.Name, sum.Op, err)
				}
				changed = true
				count++
				break
			}
		}
		if !changed {
			continue
		}
		kept := slices.DeleteFunc(terms, func(v *graph.Value) bool { return v == nil })
		out := sum.Output(0)
		name, typ := out.Name, out.Type
		var y *graph.Value
		if len(kept) == 1 {
			y = kept[0]
			if y.IsGraphOutput() || graph.ConstTensor(y) != nil {
				y = (&graph.Builder{G: g, Prefix: sum.Name}).Op("Identity", name+".merged", kept)
			}
		} else {
			y = (&graph.Builder{G: g, Prefix: sum.Name}).Op(sum.Op, name+".merged", kept)
		}
		out.ReplaceAllUsesWith(y)
		if err := g.RemoveNode(sum); err != nil {
			return count, fmt.Errorf("products: node %q (%s): %w", sum.Name, sum.Op, err)
		}
		if err := y.Rename(name); err != nil {
			return count, fmt.Errorf("products: node %q (%s): %w", sum.Name, sum.Op, err)
		}
		y.Type = typ
	}
	return count, nil
}
