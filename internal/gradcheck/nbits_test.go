package gradcheck

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

// nbitsCases cover com.microsoft's MatMulNBits: the gradient to the
// activation through a frozen 4-bit weight. ORT runs MatMulNBits in
// float32 only: relative tolerance 2e-3, step 1e-2.
func nbitsCases() []Case {
	return []Case{{
		Name: "MatMulNBits", DType: graph.Float, Domains: []string{"com.microsoft"},
		Inputs: []Input{p("a", 3, 32)},
		Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			packed := make([]byte, 4*2*8)
			for i := range packed {
				packed[i] = byte(i*37 + 11)
			}
			scales, err := graph.NewFloatTensor("s", graph.Float, []int64{8}, []float32{.1, .2, .05, .3, .15, .25, .12, .07})
			if err != nil {
				return nil, err
			}
			nb := &graph.Builder{G: b.G, Prefix: "q", Domain: "com.microsoft"}
			return nb.Op("MatMulNBits", "y", []*graph.Value{in["a"], b.Const(graph.NewTensor("w_Q4", graph.Uint8, []int64{4, 2, 8}, packed)), b.Const(scales)},
				graph.AttrI("K", 32), graph.AttrI("N", 4), graph.AttrI("bits", 4), graph.AttrI("block_size", 16)), nil
		},
	}}
}

// skipNormCases cover com.microsoft's SkipSimplifiedLayerNormalization
// (onnxruntime-genai's residual + RMSNorm) against ORT's own CPU kernel:
// without and with bias, and with the input_skip_bias_sum output read too.
func skipNormCases() []Case {
	build := func(bias, sum bool) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
		return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			ins := []*graph.Value{in["x"], in["skip"], in["gamma"]}
			if bias {
				ins = append(ins, in["bias"])
			}
			nb := &graph.Builder{G: b.G, Prefix: "n", Domain: "com.microsoft"}
			if !sum { // one output: the rule recomputes the sum
				return nb.Op("SkipSimplifiedLayerNormalization", "y", ins, graph.AttrF("epsilon", 1e-5)), nil
			}
			outs := nb.OpN("SkipSimplifiedLayerNormalization", []string{"y", "", "", "s"}, ins, graph.AttrF("epsilon", 1e-5))
			return b.Op("Add", "ys", []*graph.Value{outs[0], b.Op("Mul", "ss", []*graph.Value{outs[3], outs[3]})}), nil
		}
	}
	ms := []string{"com.microsoft"}
	return []Case{
		{Name: "SkipSimplifiedLayerNormalization", DType: graph.Float, Domains: ms, Inputs: []Input{p("x", 2, 3, 8), p("skip", 2, 3, 8), p("gamma", 8)}, Build: build(false, false)},
		{Name: "SkipSimplifiedLayerNormalization with bias", DType: graph.Float, Domains: ms, Inputs: []Input{p("x", 2, 3, 8), p("skip", 2, 3, 8), p("gamma", 8), p("bias", 8)}, Build: build(true, false)},
		{Name: "SkipSimplifiedLayerNormalization, sum output read", DType: graph.Float, Domains: ms, Inputs: []Input{p("x", 4, 8), p("skip", 4, 8), p("gamma", 8), p("bias", 8)}, Build: build(true, true)},
	}
}

// TestSkipSimplifiedLayerNormGradient checks skipNormCases against finite
// differences of ORT's kernel.
func TestSkipSimplifiedLayerNormGradient(t *testing.T) {
	runCases(t, skipNormCases())
}

// TestMatMulNBitsGradient checks nbitsCases against finite differences.
func TestMatMulNBitsGradient(t *testing.T) {
	runCases(t, nbitsCases())
}
