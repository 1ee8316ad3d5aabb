package trainstep

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/runtime"
)

// attCase is one com.microsoft Attention configuration.
type attCase struct {
	name            string
	b, s, in, heads int64
	qkv             []int64 // qkv_hidden_sizes; nil: in each
	past            int64
	mask            string // "", "2d", "dummy", "lengths", "ends+starts", "3b+2", "3d"
	noBias, uni, ab bool
	present         bool
	scale, filter   float32
}

// attentionModel builds one Attention node over random inputs, its
// weights (and bias, unless noBias) initializers; zeroBias gives a bias
// of zeros instead (ORT 1.29's CPU kernel needs one).
func attentionModel(t *testing.T, c attCase, zeroBias bool) (*graph.Model, map[string]runtime.Tensor) {
	t.Helper()
	m := graph.NewModel(17)
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	g := m.Graph
	in := newTestInputs(g, rand.New(rand.NewPCG(uint64(len(c.name)), 11)))
	qkv := c.qkv
	if qkv == nil {
		qkv = []int64{c.in, c.in, c.in}
	}
	width := qkv[0] + qkv[1] + qkv[2]
	head := qkv[0] / c.heads
	total := c.past + c.s
	ins := make([]*graph.Value, 6)
	ins[0] = in.float("x", c.b, c.s, c.in)
	ins[1] = in.weight(t, "weights", 0.5, c.in, width)
	switch {
	case zeroBias:
		zeros, err := graph.NewFloatTensor("bias", graph.Float, []int64{width}, make([]float32, width))
		if err != nil {
			t.Fatal(err)
		}
		ins[2] = g.AddInitializer(zeros)
	case !c.noBias:
		ins[2] = in.weight(t, "bias", 0.5, width)
	}
	switch c.mask {
	case "2d": // row b masks its last b keys
		vals := make([]int32, c.b*total)
		for i := range vals {
			if int64(i)%total < total-int64(i)/total {
				vals[i] = 1
			}
		}
		ins[3] = in.int32s("mask", []int64{c.b, total}, vals)
	case "dummy": // [B, 1] of zeros, which the kernel ignores
		ins[3] = in.int32s("mask", []int64{c.b, 1}, make([]int32, c.b))
	case "lengths": // row b keeps T − b keys
		vals := make([]int32, c.b)
		for i := range vals {
			vals[i] = int32(total) - int32(i)
		}
		ins[3] = in.int32s("mask", []int64{c.b}, vals)
	case "ends+starts": // row b keeps keys b .. T−b−1
		vals := make([]int32, 2*c.b)
		for i := range c.b {
			vals[i], vals[c.b+i] = int32(total-i), int32(i)
		}
		ins[3] = in.int32s("mask", []int64{2 * c.b}, vals)
	case "3b+2": // lengths T − b, then values the CPU kernel does not read
		vals := make([]int32, 3*c.b+2)
		for i := range vals {
			vals[i] = int32(total) - int32(i)%int32(c.b) - 1
		}
		ins[3] = in.int32s("mask", []int64{3*c.b + 2}, vals)
	case "3d": // a pattern keeping key 0 of every row
		vals := make([]int32, c.b*c.s*total)
		for i := range vals {
			if i%int(total) == 0 || i%3 != 0 {
				vals[i] = 1
			}
		}
		ins[3] = in.int32s("mask", []int64{c.b, c.s, total}, vals)
	}
	if c.past > 0 {
		ins[4] = in.float("past", 2, c.b, c.heads, c.past, head)
	}
	if c.ab {
		ins[5] = in.float("ab", 1, c.heads, c.s, total)
	}
	for len(ins) > 0 && ins[len(ins)-1] == nil {
		ins = ins[:len(ins)-1]
	}
	attrs := []*graph.Attr{graph.AttrI("num_heads", c.heads), graph.AttrI("unidirectional", boolInt(c.uni))}
	if c.qkv != nil {
		attrs = append(attrs, graph.AttrIs("qkv_hidden_sizes", c.qkv...))
	}
	if c.scale != 0 {
		attrs = append(attrs, graph.AttrF("scale", c.scale))
	}
	if c.filter != 0 {
		attrs = append(attrs, graph.AttrF("mask_filter_value", c.filter))
	}
	names := []string{"output"}
	if c.present {
		names = append(names, "present")
	}
	nb := &graph.Builder{G: g, Prefix: "t", Domain: "com.microsoft"}
	for _, o := range nb.OpN("Attention", names, ins, attrs...) {
		o.Type = &graph.TensorType{DType: graph.Float}
		g.AddOutput(o)
	}
	return m, in.feeds
}

// TestAttentionDecompositionMatchesORT: the decomposition of
// com.microsoft Attention gives ORT's CPU kernel's output and present
// (‖Δ‖/‖ref‖ ≤ 1e-5) with bias and without (the kernel given zeros), each
// mask_index form (2-D key padding, a [B, 1] mask the kernel ignores,
// right-padding lengths, lengths and starts, [3B + 2], 3-D), mask_filter_value,
// unidirectional with a past and a present (also one query), qkv_hidden_sizes
// with a wider V and a wider (pruned) input, scale, and an attention bias
// broadcast over the batch.
func TestAttentionDecompositionMatchesORT(t *testing.T) {
	e := ortest.Env(t)
	for _, c := range []attCase{
		{name: "bert: bias, 2-D key padding mask", b: 2, s: 5, in: 16, heads: 2, mask: "2d"},
		{name: "dummy [batch, 1] mask", b: 2, s: 4, in: 16, heads: 2, mask: "dummy"},
		{name: "right-padding lengths", b: 3, s: 4, in: 16, heads: 4, mask: "lengths"},
		{name: "lengths and starts", b: 2, s: 5, in: 16, heads: 2, mask: "ends+starts"},
		{name: "[3·batch + 2] mask", b: 2, s: 5, in: 16, heads: 2, mask: "3b+2"},
		{name: "3-D mask, mask_filter_value", b: 2, s: 4, in: 8, heads: 2, mask: "3d", filter: -300},
		{name: "gpt-2: unidirectional, past, present", b: 2, s: 3, past: 4, in: 16, heads: 2, uni: true, present: true},
		{name: "unidirectional, one query, past, padding", b: 2, s: 1, past: 5, in: 16, heads: 2, uni: true, present: true, mask: "2d"},
		{name: "unidirectional, present without past", b: 1, s: 5, in: 8, heads: 2, uni: true, present: true},
		{name: "qkv_hidden_sizes, wider V, pruned input, scale", b: 2, s: 4, in: 20, heads: 4, qkv: []int64{16, 16, 24}, scale: 0.3},
		{name: "attention bias over the batch", b: 2, s: 4, in: 16, heads: 2, ab: true, mask: "lengths"},
		{name: "no bias", b: 2, s: 4, in: 16, heads: 2, noBias: true, uni: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, feeds := attentionModel(t, c, false)
			ref := m
			if c.noBias {
				ref, _ = attentionModel(t, c, true)
			}
			outputs := []string{"output"}
			if c.present {
				outputs = append(outputs, "present")
			}
			decomposedMatchesORT(t, e, ref, m, feeds, outputs...)
		})
	}
}

// TestAttentionRefusals: the forms the decompositions refuse fail with
// one error naming the node, the op and the attribute, input or form.
func TestAttentionRefusals(t *testing.T) {
	base := attCase{b: 2, s: 3, in: 8, heads: 2}
	attention := func(edit func(*graph.Model, *graph.Node)) func(t *testing.T) *graph.Model {
		return func(t *testing.T) *graph.Model {
			m, _ := attentionModel(t, base, false)
			m.Graph.Walk(func(n *graph.Node) { edit(m, n) })
			return m
		}
	}
	setAttr := func(a *graph.Attr) func(t *testing.T) *graph.Model {
		return attention(func(_ *graph.Model, n *graph.Node) { n.SetAttr(a) })
	}
	addInput := func(slot int, name string, dt graph.DataType, dims ...int64) func(t *testing.T) *graph.Model {
		return attention(func(m *graph.Model, n *graph.Node) {
			v := m.Graph.AddInput(name, &graph.TensorType{DType: dt, Shape: static(dims)})
			n.SetInput(slot, v) // SetInput pads the slots before it with absent inputs
		})
	}
	mha := func(shapes ...[]int64) func(t *testing.T) *graph.Model {
		return func(t *testing.T) *graph.Model {
			m := graph.NewModel(17)
			m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
			in := newTestInputs(m.Graph, rand.New(rand.NewPCG(1, 11)))
			ins := make([]*graph.Value, len(shapes))
			for i, s := range shapes {
				if s != nil {
					ins[i] = in.float(string(rune('q'+i)), s...)
				}
			}
			nb := &graph.Builder{G: m.Graph, Prefix: "t", Domain: "com.microsoft"}
			nb.Op("MultiHeadAttention", "output", ins, graph.AttrI("num_heads", 2))
			return m
		}
	}
	for _, c := range []struct {
		name  string
		model func(t *testing.T) *graph.Model
		want  []string
	}{
		{"do_rotary", setAttr(graph.AttrI("do_rotary", 1)), []string{"Attention", "attribute do_rotary=1"}},
		{"past_present_share_buffer", setAttr(graph.AttrI("past_present_share_buffer", 1)), []string{"Attention", "attribute past_present_share_buffer=1"}},
		{"qkv_hidden_sizes", setAttr(graph.AttrIs("qkv_hidden_sizes", 8, 4, 12)), []string{"Attention", "hidden sizes q 8, k 4, v 12 (attribute qkv_hidden_sizes)"}},
		{"past_sequence_length", addInput(attPastSeqLen, "psl", graph.Int32, 1), []string{"Attention", "input past_sequence_length"}},
		{"Megatron mask", addInput(attMaskIndex, "mask", graph.Int32, 2, 1, 3, 3), []string{"Attention", "mask_index of rank 4"}},
		{"mask of 3B+1", addInput(attMaskIndex, "mask", graph.Int32, 7), []string{"Attention", "mask_index of length 7 for batch 2"}},
		{"past with attention bias", attention(func(m *graph.Model, n *graph.Node) {
			past := m.Graph.AddInput("past", &graph.TensorType{DType: graph.Float, Shape: static([]int64{2, 2, 2, 1, 4})})
			ab := m.Graph.AddInput("ab", &graph.TensorType{DType: graph.Float, Shape: static([]int64{2, 2, 3, 4})})
			n.SetInput(3, nil)
			n.SetInput(4, past)
			n.SetInput(5, ab)
		}), []string{"Attention", "inputs past and attention_bias"}},
		{"MHA packed QKV", mha([]int64{2, 3, 2, 3, 4}), []string{"MultiHeadAttention", "packed QKV (query [batch, length, heads, 3, head]"}},
		{"MHA packed QKV, 3-D", mha([]int64{2, 3, 24}), []string{"MultiHeadAttention", "packed QKV (query [batch, length, 3·hidden]"}},
		{"MHA packed KV", mha([]int64{2, 3, 8}, []int64{2, 5, 2, 2, 4}), []string{"MultiHeadAttention", "packed KV (key [batch, length, heads, 2, head]"}},
		{"MHA heads with past", mha([]int64{2, 3, 8}, []int64{2, 2, 5, 4}, []int64{2, 2, 5, 4}, nil, nil, nil, []int64{2, 2, 1, 4}, []int64{2, 2, 1, 4}), []string{"MultiHeadAttention", "past_key and past_value with key and value given as heads"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := c.model(t)
			var name string
			m.Graph.Walk(func(n *graph.Node) {
				if n.Domain == "com.microsoft" {
					name = n.Name
				}
			})
			_, err := Decompose(m)
			if err == nil {
				t.Fatal("Decompose succeeded")
			}
			for _, w := range append([]string{`node "` + name + `" (com.microsoft `}, c.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
