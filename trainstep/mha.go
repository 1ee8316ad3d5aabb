package trainstep

// Part of pass "canonicalize": com.microsoft MultiHeadAttention (the
// model builder's and ORT's transformer optimizer's fused attention)
// decomposed into standard ops, like GroupQueryAttention (contrib.go).
//
// Semantics (ORT's ContribOperators documentation and CPU kernel, facts
// only): query [B, S, N·H], key [B, L, N·H] and value [B, L, N·Hv]
// (3-D; the packed and BNSH key/value forms are refused), an optional
// bias [N·H + N·H + N·Hv] added to the three, optional past_key and
// past_value [B, N, P, H] that the new keys and values are appended to
// (present_key/present_value [B, N, P+L, H]), an optional
// key_padding_mask [B, P+L] (int32: 0 masks the key by adding
// mask_filter_value, −10000 by default), an optional attention_bias
// broadcast to [B, N, S, P+L], unidirectional masking keys past each
// query's position P + i, scale 1/√H by default; softmax; times V.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// MultiHeadAttention input slots.
const (
	mhaQuery = iota
	mhaKey
	mhaValue
	mhaBias
	mhaKeyPadding
	mhaAttentionBias
	mhaPastKey
	mhaPastValue
	mhaPastSeqLen
	mhaCacheIndirection
)

func decomposeMHA(m *graph.Model, n *graph.Node) error {
	if m.OpsetVersion("") < 13 {
		return fmt.Errorf("the decomposition needs opset 13 (the model has %d)", m.OpsetVersion(""))
	}
	for _, in := range []struct {
		slot int
		name string
	}{{mhaPastSeqLen, "past_sequence_length"}, {mhaCacheIndirection, "cache_indirection"}} {
		if input(n, in.slot) != nil {
			return fmt.Errorf("input %s (beam search decoding) is not supported for training", in.name)
		}
	}
	if len(n.Outputs()) > 3 && n.Output(3) != nil {
		return fmt.Errorf("output qk is not supported for training")
	}
	heads := n.AttrInt("num_heads", 0)
	if heads <= 0 {
		return fmt.Errorf("num_heads %d: want a positive count", heads)
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	q, k, v := input(n, mhaQuery), input(n, mhaKey), input(n, mhaValue)
	if k == nil || v == nil || inf.Rank(q) != 3 || inf.Rank(k) != 3 || inf.Rank(v) != 3 {
		return fmt.Errorf("query, key and value must all be given as [batch, length, hidden] (packed QKV/KV and BNSH keys are not supported)")
	}
	qw, kw, vw := lastDim(inf, q), lastDim(inf, k), lastDim(inf, v)
	if qw <= 0 || qw%heads != 0 || kw != qw || vw <= 0 || vw%heads != 0 {
		return fmt.Errorf("hidden sizes query %d, key %d, value %d: want known sizes that num_heads %d divides, key's equal to query's", qw, kw, vw, heads)
	}
	head, vHead := qw/heads, vw/heads
	if bias := input(n, mhaBias); bias != nil {
		parts := b.Split(bias, 0, qw, kw, vw)
		q, k, v = b.Add(q, parts[0]), b.Add(k, parts[1]), b.Add(v, parts[2])
	}
	bnsh := func(x *graph.Value, d int64) *graph.Value {
		return b.Transpose(b.Reshape(x, b.Ints(0, 0, heads, d)), 0, 2, 1, 3)
	}
	qh, kh, vh := bnsh(q, head), bnsh(k, head), bnsh(v, vHead)
	pastK, pastV := input(n, mhaPastKey), input(n, mhaPastValue)
	if (pastK == nil) != (pastV == nil) {
		return fmt.Errorf("past_key and past_value must both be given or both be absent")
	}
	past := b.Int0(0)
	if pastK != nil {
		past = b.Gather(b.Shape(pastK), b.Int0(2), 0)
		kh, vh = b.Concat(2, pastK, kh), b.Concat(2, pastV, vh)
	}
	seq := b.Gather(b.Shape(qh), b.Int0(2), 0)
	total := b.Gather(b.Shape(kh), b.Int0(2), 0)
	var bias *graph.Value
	if mask := input(n, mhaKeyPadding); mask != nil {
		if inf.Rank(mask) != 2 {
			return fmt.Errorf("key_padding_mask of rank %d: only the [batch, total length] form is supported", inf.Rank(mask))
		}
		keep := b.Cast(mask, graph.Bool)
		filter := float64(n.AttrFloat("mask_filter_value", -10000))
		bias = b.Unsqueeze(b.Where(keep, b.K(0, qh), b.K(filter, qh)), 1, 2) // [B, 1, 1, T]
	}
	if ab := input(n, mhaAttentionBias); ab != nil {
		if bias == nil {
			bias = ab
		} else {
			bias = b.Add(bias, ab)
		}
	}
	out := attend(b, qh, kh, vh, attention{
		heads: heads, head: vHead, scale: float64(n.AttrFloat("scale", 0)),
		causal: n.AttrInt("unidirectional", 0) != 0, window: -1,
		qpos: b.Range(past, b.Add(past, seq), b.Int0(1)), total: total, bias: bias,
	})
	if s := n.AttrFloat("scale", 0); s == 0 && head != vHead {
		return fmt.Errorf("value head size %d differs from the key's %d: give the scale attribute", vHead, head)
	}
	if err := b.Err(); err != nil {
		return err
	}
	return replaceOutputs(m.Graph, n, out, kh, vh)
}
