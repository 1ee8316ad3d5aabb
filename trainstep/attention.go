package trainstep

// Part of pass "canonicalize": com.microsoft Attention, the older fused
// attention of ORT's transformer optimizer (BERT, GPT-2) and of some
// genai builder fallbacks, which holds its Q/K/V projection weights,
// decomposed into standard ops: x·W (+ bias) split into Q, K and V, then
// the core MultiHeadAttention uses (attendHeads, mha.go).
//
// Semantics (ORT's ContribOperators documentation and CPU kernel, facts
// only): input [B, S, Di]; weights [Di, D + D + Dv] (columns: Q, K, V;
// D = Dv = width/3 unless qkv_hidden_sizes gives them; Di may exceed D in
// pruned models); bias [D + D + Dv], optional in the documentation but
// required by ORT 1.29's CPU kernel (it crashes without one: the kernel
// wins where they disagree, so the tests measure a model without bias
// against the kernel given a zero bias); mask_index (int32) [B, T] or
// [B, S, T] of 1/0, [B] right-padding lengths, [2B] lengths then
// starts, or [3B + 2] (maskBias, mha.go), while [B, 1] and [1, 1] are
// ignored; past [2, B, N, P, H] (K and V stacked), which K and V are
// appended to, giving present [2, B, N, P+S, H]; attention_bias
// [B or 1, N or 1, S, T]; num_heads, unidirectional, scale (1/√(D/N) by
// default) and mask_filter_value (−10000) as for MultiHeadAttention.
// Output [B, S, Dv].
//
// LoRA: the projection is one standard MatMul whose second input is the
// weights as the model holds them (a fused qkv projection), so a pass
// that injects adapters after canonicalize could target it. Today inject
// runs before training compilation and sees only the Attention node, so
// these weights are not LoRA targets; the rest of the model is.
//
// Refused by name: do_rotary (ORT's CPU kernel does not implement it
// either), past_present_share_buffer and past_sequence_length (a decoding
// cache), the 4-D Megatron mask (not in the CPU kernel), past together
// with attention_bias (the kernel refuses the pair), a present whose K and
// V head sizes differ.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// Attention input slots.
const (
	attInput = iota
	attWeights
	attBias
	attMaskIndex
	attPast
	attAttentionBias
	attPastSeqLen
)

func decomposeAttention(m *graph.Model, n *graph.Node) error {
	for _, a := range []string{"do_rotary", "past_present_share_buffer"} {
		if v := n.AttrInt(a, 0); v != 0 {
			return fmt.Errorf("attribute %s=%d is not supported for training", a, v)
		}
	}
	if input(n, attPastSeqLen) != nil {
		return fmt.Errorf("input past_sequence_length (a shared decoding cache) is not supported for training")
	}
	heads, err := numHeads(n)
	if err != nil {
		return err
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	x, w := input(n, attInput), input(n, attWeights)
	if x == nil || w == nil || inf.Rank(x) != 3 || inf.Rank(w) != 2 {
		return fmt.Errorf("want input [batch, length, hidden] and weights [hidden, q + k + v hidden]")
	}
	qw, kw, vw, err := attentionWidths(n, lastDim(inf, w), heads)
	if err != nil {
		return err
	}
	head, vHead := qw/heads, vw/heads
	mask, past, ab := input(n, attMaskIndex), input(n, attPast), input(n, attAttentionBias)
	if err := checkMaskIndex(inf, mask, x); err != nil {
		return err
	}
	if mask != nil && inf.Rank(mask) == 2 && dimAt(inf, mask, 1) == 1 {
		// ORT's kernel ignores a [B, 1] or [1, 1] mask (where T = 1 it
		// would mask the one key, which softmax ignores): as a bias it
		// would shift each row by −10000, which is exact in softmax but
		// costs float32 the scores' low bits.
		mask = nil
	}
	if past != nil && ab != nil {
		return fmt.Errorf("inputs past and attention_bias together are not supported (ORT's kernel refuses them)")
	}
	wantPresent := len(n.Outputs()) > 1 && n.Output(1) != nil
	if (past != nil || wantPresent) && head != vHead {
		return fmt.Errorf("past or present with key head size %d and value head size %d: want them equal", head, vHead)
	}
	proj := b.MatMul(x, w) // the weights as a standard MatMul's second input: see the header
	if bias := input(n, attBias); bias != nil {
		proj = b.Add(proj, bias)
	}
	parts := b.Split(proj, -1, qw, kw, vw)
	bnsh := func(x *graph.Value, d int64) *graph.Value {
		return b.Transpose(b.Reshape(x, b.Ints(0, 0, heads, d)), 0, 2, 1, 3)
	}
	p := mhaParts{
		qh: bnsh(parts[0], head), kh: bnsh(parts[1], head), vh: bnsh(parts[2], vHead),
		mask: mask, attnBias: ab, heads: heads, head: head, vHead: vHead,
	}
	if past != nil {
		kv := b.Split(past, 0, 1, 1)
		p.pastK, p.pastV = b.Squeeze(kv[0], 0), b.Squeeze(kv[1], 0)
	}
	out, presentK, presentV, err := attendHeads(b, n, p)
	if err != nil {
		return err
	}
	var present *graph.Value
	if wantPresent {
		present = b.Concat(0, b.Unsqueeze(presentK, 0), b.Unsqueeze(presentV, 0))
		if err := b.Err(); err != nil {
			return err
		}
	}
	return replaceOutputs(m.Graph, n, out, present)
}

// attentionWidths is the Q, K and V hidden sizes of an Attention node
// whose weights are width columns wide: qkv_hidden_sizes, or a third each.
func attentionWidths(n *graph.Node, width, heads int64) (qw, kw, vw int64, err error) {
	if width <= 0 {
		return 0, 0, 0, fmt.Errorf("weights of unknown width: want a known last dim")
	}
	from := "a third each of the weights' width"
	switch sizes := n.AttrInts("qkv_hidden_sizes"); len(sizes) {
	case 0:
		qw, kw, vw = width/3, width/3, width/3
	case 3:
		qw, kw, vw = sizes[0], sizes[1], sizes[2]
		from = "attribute qkv_hidden_sizes"
	default:
		return 0, 0, 0, fmt.Errorf("attribute qkv_hidden_sizes %v: want three sizes", sizes)
	}
	if qw <= 0 || qw != kw || vw <= 0 || qw+kw+vw != width || qw%heads != 0 || vw%heads != 0 {
		return 0, 0, 0, fmt.Errorf("hidden sizes q %d, k %d, v %d (%s) for weights %d wide: want q = k, their sum the width, each a multiple of num_heads %d", qw, kw, vw, from, width, heads)
	}
	return qw, kw, vw, nil
}

// checkMaskIndex refuses the mask_index forms maskBias does not know:
// the 4-D Megatron mask, and a 1-D one whose length (when known) is not
// B, 2B or 3B + 2.
func checkMaskIndex(inf *infer.Inferer, mask, x *graph.Value) error {
	if mask == nil {
		return nil
	}
	switch r := inf.Rank(mask); r {
	case 2, 3:
		return nil
	case 1:
		l, batch := dimAt(inf, mask, 0), dimAt(inf, x, 0)
		if l > 0 && batch > 0 && l != batch && l != 2*batch && l != 3*batch+2 {
			return fmt.Errorf("mask_index of length %d for batch %d: want the lengths [batch], lengths and starts [2·batch], or [3·batch + 2]", l, batch)
		}
		return nil
	case 4:
		return fmt.Errorf("mask_index of rank 4 (Megatron [batch, 1, max, max]) is not supported (ORT's CPU kernel does not implement it)")
	default:
		return fmt.Errorf("mask_index of rank %d: want 1, 2 or 3", r)
	}
}
