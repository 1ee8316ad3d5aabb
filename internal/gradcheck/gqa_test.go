package gradcheck

import (
	"encoding/binary"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/trainstep"
)

// gqaCases differentiate com.microsoft GroupQueryAttention through its
// decomposition (trainstep.Decompose, which canonicalize runs before
// autodiff; trainstep's TestGQADecompositionMatchesORT shows it computes
// ORT's kernel): grouped heads with rotary, interleaved rotary with a
// softcap, packed QKV with a local window. float32 (the kernel has no
// float64): tolerance 2e-3, step 1e-2.
func gqaCases() []Case {
	const head = 16
	build := func(heads, kvHeads, seq int64, packed bool, attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
		return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			const half, maxLen = head / 2, 8
			cos, sin := testmodels.RotaryCaches(maxLen, half)
			ct, err := graph.NewFloatTensor("cos_cache", graph.Float, []int64{maxLen, half}, cos)
			if err != nil {
				return nil, err
			}
			st, err := graph.NewFloatTensor("sin_cache", graph.Float, []int64{maxLen, half}, sin)
			if err != nil {
				return nil, err
			}
			ins := []*graph.Value{in["q"], in["k"], in["v"]}
			if packed {
				ins = []*graph.Value{in["qkv"], nil, nil}
			}
			ins = append(ins, nil, nil, int32Const(b, "seqlens_k", []int64{2}, int32(seq-1), int32(seq-1)), int32Const(b, "total", nil, int32(seq)), b.Const(ct), b.Const(st))
			nb := &graph.Builder{G: b.G, Prefix: "a", Domain: "com.microsoft"}
			nb.Op("GroupQueryAttention", "att", ins, append([]*graph.Attr{graph.AttrI("num_heads", heads), graph.AttrI("kv_num_heads", kvHeads), graph.AttrI("do_rotary", 1)}, attrs...)...)
			return decomposed(b, "att")
		}
	}
	ms := []string{"com.microsoft"}
	return []Case{
		{Name: "GroupQueryAttention grouped, rotary", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 4, 4*head), p("k", 2, 4, 2*head), p("v", 2, 4, 2*head)}, Build: build(4, 2, 4, false)},
		{Name: "GroupQueryAttention interleaved rotary, softcap", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 3, 2*head), p("k", 2, 3, head), p("v", 2, 3, head)}, Build: build(2, 1, 3, false, graph.AttrI("rotary_interleaved", 1), graph.AttrF("softcap", 2))},
		{Name: "GroupQueryAttention packed, local window", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("qkv", 2, 5, 4*head)}, Build: build(2, 1, 5, true, graph.AttrI("local_window_size", 2))},
	}
}

// rotaryCases differentiate com.microsoft RotaryEmbedding through its
// decomposition: BSNH by halves with position ids, BNSH interleaved with
// an offset.
func rotaryCases() []Case {
	build := func(interleaved bool, offset bool) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
		return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
			const half, maxLen = 4, 8
			cos, sin := testmodels.RotaryCaches(maxLen, half)
			ct, err := graph.NewFloatTensor("cos_cache", graph.Float, []int64{maxLen, half}, cos)
			if err != nil {
				return nil, err
			}
			st, err := graph.NewFloatTensor("sin_cache", graph.Float, []int64{maxLen, half}, sin)
			if err != nil {
				return nil, err
			}
			pos := b.Int64s("pos", []int64{0, 1, 2, 1, 2, 3})
			if offset {
				pos = b.Int64s("pos", []int64{2})
			} else {
				pos = b.Op("Reshape", "pos2", []*graph.Value{pos, b.Int64s("pshape", []int64{2, 3})})
			}
			nb := &graph.Builder{G: b.G, Prefix: "r", Domain: "com.microsoft"}
			nb.Op("RotaryEmbedding", "rot", []*graph.Value{in["x"], pos, b.Const(ct), b.Const(st)}, graph.AttrI("interleaved", boolInt(interleaved)))
			return decomposed(b, "rot")
		}
	}
	ms := []string{"com.microsoft"}
	return []Case{
		{Name: "RotaryEmbedding BSNH", DType: graph.Float, Domains: ms, Inputs: []Input{p("x", 2, 3, 16)}, Build: build(false, false)},
		{Name: "RotaryEmbedding BNSH interleaved, offset", DType: graph.Float, Domains: ms, Inputs: []Input{p("x", 1, 2, 3, 8)}, Build: build(true, true)},
	}
}

// decomposed replaces the contrib nodes of b's model by standard ops and
// returns the value named out.
func decomposed(b *graph.Builder, out string) (*graph.Value, error) {
	if _, err := trainstep.Decompose(b.G.Model); err != nil {
		return nil, err
	}
	return b.G.Lookup(out), nil
}

// int32Const is an int32 initializer (sequence lengths, masks).
func int32Const(b *graph.Builder, name string, dims []int64, vals ...int32) *graph.Value {
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
	}
	return b.Const(graph.NewTensor(name, graph.Int32, dims, raw))
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// TestRotaryGradient checks rotaryCases against finite differences.
func TestRotaryGradient(t *testing.T) {
	runCases(t, rotaryCases())
}

// mhaCases differentiate com.microsoft MultiHeadAttention through its
// decomposition: self-attention with bias, unidirectional; cross-attention.
func mhaCases() []Case {
	ms := []string{"com.microsoft"}
	return []Case{
		{Name: "MultiHeadAttention self, bias, unidirectional", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 4, 16), p("k", 2, 4, 16), p("v", 2, 4, 16), p("bias", 48)}, Build: buildMHA(graph.AttrI("unidirectional", 1))},
		{Name: "MultiHeadAttention cross", DType: graph.Float, Domains: ms,
			Inputs: []Input{p("q", 2, 3, 16), p("k", 2, 5, 16), p("v", 2, 5, 16)}, Build: buildMHA()},
	}
}

// buildMHA builds one MultiHeadAttention of two heads over the inputs
// q, k, v and (where the case has it) bias, and decomposes it.
func buildMHA(attrs ...*graph.Attr) func(*graph.Builder, map[string]*graph.Value) (*graph.Value, error) {
	return func(b *graph.Builder, in map[string]*graph.Value) (*graph.Value, error) {
		ins := []*graph.Value{in["q"], in["k"], in["v"]}
		if in["bias"] != nil {
			ins = append(ins, in["bias"])
		}
		nb := &graph.Builder{G: b.G, Prefix: "m", Domain: "com.microsoft"}
		nb.Op("MultiHeadAttention", "mha", ins, append([]*graph.Attr{graph.AttrI("num_heads", 2)}, attrs...)...)
		return decomposed(b, "mha")
	}
}

// TestMHAGradient checks mhaCases against finite differences.
func TestMHAGradient(t *testing.T) {
	runCases(t, mhaCases())
}

// TestGQAGradient checks gqaCases against finite differences.
func TestGQAGradient(t *testing.T) {
	runCases(t, gqaCases())
}
