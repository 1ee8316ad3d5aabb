package gradcheck

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

// attentionCases differentiate com.microsoft Attention and the forms of
// MultiHeadAttention added with it through their decompositions
// (trainstep.Decompose; trainstep's TestAttentionDecompositionMatchesORT
// and TestMHADecompositionMatchesORT show they compute ORT's kernels):
// the input, the projection weights and bias, the past and the attention
// bias are parameters; masks are constants. float32: tolerance 2e-3.
func attentionCases() []Case {
	// attention builds one Attention node over x, w and those of bias,
	// past and ab the case has, with a mask_index constant when mask is
	// non-nil.
	attention := func(maskDims []int64, mask []int32, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
		return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			ins := []*graph.Value{in["x"], in["w"], in["bias"], nil, in["past"], in["ab"]}
			if mask != nil {
				ins[3] = int32Const(b, "mask", maskDims, mask...)
			}
			for len(ins) > 0 && ins[len(ins)-1] == nil {
				ins = ins[:len(ins)-1]
			}
			nb := &graph.Builder{G: b.G, Prefix: "a", Domain: "com.microsoft"}
			nb.Op("Attention", "att", ins, append([]*graph.Attr{graph.AttrI("num_heads", 2)}, attrs...)...)
			return decomposed(b, "att")
		}
	}
	ms := []string{"com.microsoft"}
	return []Case{
		{Name: "Attention unidirectional, bias, past", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("x", 2, 3, 8), p("w", 8, 24), p("bias", 24), p("past", 2, 2, 2, 2, 4)},
			Build:  attention(nil, nil, graph.AttrI("unidirectional", 1))},
		{Name: "Attention lengths and starts, qkv_hidden_sizes", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("x", 2, 4, 6), p("w", 6, 28), p("bias", 28)},
			Build:  attention([]int64{4}, []int32{4, 3, 0, 1}, graph.AttrIs("qkv_hidden_sizes", 8, 8, 12))},
		{Name: "Attention 3-D mask, attention bias, no bias", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("x", 1, 3, 8), p("w", 8, 24), p("ab", 1, 2, 3, 3)},
			Build:  attention([]int64{1, 3, 3}, []int32{1, 0, 1, 1, 1, 0, 0, 1, 1})},
		{Name: "MultiHeadAttention key and value as heads, bias", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 3, 16), p("k", 2, 2, 5, 8), p("v", 2, 2, 5, 8), p("bias", 48)}, Build: buildMHA()},
		{Name: "MultiHeadAttention key and value as heads, unidirectional, one query", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 1, 16), p("k", 2, 2, 4, 8), p("v", 2, 2, 4, 8)}, Build: buildMHA(graph.AttrI("unidirectional", 1))},
	}
}

// TestAttentionGradient checks attentionCases against finite differences.
func TestAttentionGradient(t *testing.T) {
	runCases(t, attentionCases())
}
