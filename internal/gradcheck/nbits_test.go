package gradcheck

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

// nbitsCases cover com.microsoft's MatMulNBits: the gradient to the
// activation through a frozen weight, dequantized while the step runs
// (2, 4 and 8 bits; with packed zero points, a partial last block and an
// odd block count; a rank-3 activation; at opset 21 one DequantizeLinear).
// ORT runs MatMulNBits in float32 only: relative tolerance 2e-3,
// step 1e-2.
func nbitsCases() []Case {
	nbits := func(name string, lead []int64, k, n, bits, block int64, zp bool, opset ...int64) Case {
		return Case{
			Name: name, DType: graph.Float, Domains: []string{"com.microsoft"}, Opset: append(opset, 0)[0],
			Inputs: []Input{p("a", append(append([]int64(nil), lead...), k)...)},
			Build: func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
				blocks := (k + block - 1) / block
				packed := make([]byte, n*blocks*block*bits/8)
				for i := range packed {
					packed[i] = byte(i*37 + 11)
				}
				sc := make([]float32, n*blocks)
				for i := range sc {
					sc[i] = 0.05 + 0.03*float32(i%7)
				}
				scales, err := graph.NewFloatTensor("s", graph.Float, []int64{n * blocks}, sc)
				if err != nil {
					return nil, err
				}
				ins := []*graph.Value{in["a"], b.Const(graph.NewTensor("w_Q", graph.Uint8, []int64{n, blocks, block * bits / 8}, packed)), b.Const(scales)}
				if zp {
					z := make([]byte, n*((blocks*bits+7)/8))
					for i := range z {
						z[i] = byte(i*53 + 7)
					}
					ins = append(ins, b.Const(graph.NewTensor("zp", graph.Uint8, []int64{int64(len(z))}, z)))
				}
				nb := &graph.Builder{G: b.G, Prefix: "q", Domain: "com.microsoft"}
				return nb.Op("MatMulNBits", "y", ins,
					graph.AttrI("K", k), graph.AttrI("N", n), graph.AttrI("bits", bits), graph.AttrI("block_size", block)), nil
			},
		}
	}
	return []Case{
		nbits("MatMulNBits", []int64{3}, 32, 4, 4, 16, false),
		nbits("MatMulNBits, zero points, partial last block", []int64{2, 3}, 40, 5, 4, 16, true),
		nbits("MatMulNBits, 8 bits, zero points", []int64{3}, 32, 4, 8, 16, true),
		nbits("MatMulNBits, 2 bits, zero points", []int64{3}, 32, 3, 2, 16, true),
		nbits("MatMulNBits, opset 21 (DequantizeLinear)", []int64{3}, 32, 4, 4, 16, false, 21),
		nbits("MatMulNBits, opset 21, zero points, partial last block", []int64{2, 3}, 40, 5, 4, 16, true, 21),
	}
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
