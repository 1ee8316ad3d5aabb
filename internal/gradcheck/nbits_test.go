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

// TestMatMulNBitsGradient checks nbitsCases against finite differences.
func TestMatMulNBitsGradient(t *testing.T) {
	runCases(t, nbitsCases())
}
