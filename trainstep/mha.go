package trainstep

// Part of pass "canonicalize": com.microsoft MultiHeadAttention (the
// model builder's and ORT's transformer optimizer's fused attention)
// decomposed into standard ops, like GroupQueryAttention (contrib.go).
//
// Semantics (ORT's ContribOperators documentation and CPU kernel, facts
// only): query [B, S, N·H]; key [B, L, N·H] and value [B, L, N·Hv], or
// both given as heads [B, N, L, H] (the cross-attention cache form,
// which takes no past, and whose presents are the key and value
// themselves); an optional bias [N·H + N·H + N·Hv] added to the three
// (to the query alone when key and value are heads: ORT 1.29's CPU
// kernel reads no more of it there, measured); optional past_key and
// past_value [B, N, P, H] that the new keys and values are appended to
// (present_key/present_value [B, N, P+L, H]); an optional
// key_padding_mask [B, P+L] (int32: 0 masks the key by adding
// mask_filter_value, −10000 by default); an optional attention_bias
// broadcast to [B, N, S, P+L]; unidirectional masking keys past each
// query's position P + i (not applied when S = 1, where the one query
// sees every key); scale 1/√H by default; softmax; times V.
//
// Refused by name: the packed forms (QKV in a query [B, S, N, 3, H] or
// [B, S, 3·N·H], KV in a key [B, L, N, 2, H]), which ORT 1.29's CPU
// kernel does not implement, so no decomposition of them could be
// checked against it; past_sequence_length and cache_indirection (beam
// search); the qk output.
//
// The shared core (attendHeads) serves com.microsoft Attention too
// (attention.go), which projects its input into Q, K and V itself.

import (
	"fmt"
	"math"

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
	heads, err := numHeads(n)
	if err != nil {
		return err
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	q, k, v := input(n, mhaQuery), input(n, mhaKey), input(n, mhaValue)
	switch {
	case inf.Rank(q) == 5:
		return fmt.Errorf("packed QKV (query [batch, length, heads, 3, head], key and value absent) is not supported: ORT's CPU kernel does not implement it, so the decomposition could not be checked against it")
	case k != nil && inf.Rank(k) == 5:
		return fmt.Errorf("packed KV (key [batch, length, heads, 2, head], value absent) is not supported: ORT's CPU kernel does not implement it, so the decomposition could not be checked against it")
	case k == nil && v == nil:
		return fmt.Errorf("packed QKV (query [batch, length, 3·hidden], key and value absent) is not supported: ORT's CPU kernel does not implement it, so the decomposition could not be checked against it")
	case k == nil || v == nil || inf.Rank(q) != 3:
		return fmt.Errorf("want query [batch, length, hidden] with key and value both given (query of rank %d)", inf.Rank(q))
	}
	qw := lastDim(inf, q)
	if qw <= 0 || qw%heads != 0 {
		return fmt.Errorf("query's hidden size %d: want a known size that num_heads %d divides", qw, heads)
	}
	head := qw / heads
	bnsh := func(x *graph.Value, d int64) *graph.Value {
		return b.Transpose(b.Reshape(x, b.Ints(0, 0, heads, d)), 0, 2, 1, 3)
	}
	bias, pastK, pastV := input(n, mhaBias), input(n, mhaPastKey), input(n, mhaPastValue)
	var qh, kh, vh *graph.Value
	var vHead int64
	switch kr, vr := inf.Rank(k), inf.Rank(v); {
	case kr == 4 && vr == 4: // the cross-attention cache: already heads
		if pastK != nil || pastV != nil {
			return fmt.Errorf("past_key and past_value with key and value given as heads [batch, heads, length, head] are not supported (ORT's CPU kernel ignores the past there)")
		}
		vHead = lastDim(inf, v)
		if dimAt(inf, k, 1) != heads || dimAt(inf, v, 1) != heads || lastDim(inf, k) != head || vHead <= 0 {
			return fmt.Errorf("key and value given as heads: want [batch, %d, length, %d] and [batch, %d, length, value head] with known sizes", heads, head, heads)
		}
		if bias != nil { // only its query part: the kernel reads no more of it here (measured)
			q = b.Add(q, b.Slice(bias, 0, qw, 0))
		}
		qh, kh, vh = bnsh(q, head), k, v
	case kr == 3 && vr == 3:
		kw, vw := lastDim(inf, k), lastDim(inf, v)
		if kw != qw || vw <= 0 || vw%heads != 0 {
			return fmt.Errorf("hidden sizes query %d, key %d, value %d: want known sizes that num_heads %d divides, key's equal to query's", qw, kw, vw, heads)
		}
		vHead = vw / heads
		if bias != nil {
			parts := b.Split(bias, 0, qw, kw, vw)
			q, k, v = b.Add(q, parts[0]), b.Add(k, parts[1]), b.Add(v, parts[2])
		}
		qh, kh, vh = bnsh(q, head), bnsh(k, head), bnsh(v, vHead)
	default:
		return fmt.Errorf("key of rank %d and value of rank %d: want both [batch, length, hidden] or both [batch, heads, length, head]", kr, vr)
	}
	mask := input(n, mhaKeyPadding)
	if mask != nil && inf.Rank(mask) != 2 {
		return fmt.Errorf("key_padding_mask of rank %d: only the [batch, total length] form is supported", inf.Rank(mask))
	}
	out, presentK, presentV, err := attendHeads(b, n, mhaParts{
		qh: qh, kh: kh, vh: vh, pastK: pastK, pastV: pastV,
		mask: mask, attnBias: input(n, mhaAttentionBias),
		heads: heads, head: head, vHead: vHead,
	})
	if err != nil {
		return err
	}
	return replaceOutputs(m.Graph, n, out, presentK, presentV)
}

// mhaParts is what MultiHeadAttention and Attention hand their shared
// core once their inputs are heads.
type mhaParts struct {
	qh, kh, vh   *graph.Value // [B, N, S, H], [B, N, L, H], [B, N, L, Hv]
	pastK, pastV *graph.Value // [B, N, P, H] and [B, N, P, Hv], or nil
	// mask is a mask in one of maskBias's forms, or nil; attnBias is
	// added to the scores ([B or 1, N or 1, S, P+L]), or nil.
	mask, attnBias     *graph.Value
	heads, head, vHead int64
}

// attendHeads is the core MultiHeadAttention and Attention share: the
// past appended to K and V, the mask and attention bias summed into one
// additive bias, and attend with the attributes both ops name alike
// (unidirectional, scale, mask_filter_value). It returns the output
// [B, S, N·Hv] and the presents [B, N, P+L, H|Hv].
func attendHeads(b *opb.Builder, n *graph.Node, p mhaParts) (out, presentK, presentV *graph.Value, err error) {
	if (p.pastK == nil) != (p.pastV == nil) {
		return nil, nil, nil, fmt.Errorf("past key and value must both be given or both be absent")
	}
	kh, vh := p.kh, p.vh
	if p.pastK != nil {
		kh, vh = b.Concat(2, p.pastK, kh), b.Concat(2, p.pastV, vh)
	}
	seq := b.Gather(b.Shape(p.qh), b.Int0(2), 0)
	total := b.Gather(b.Shape(kh), b.Int0(2), 0)
	var bias *graph.Value
	if p.mask != nil {
		bias = maskBias(b, p.mask, p.qh, total, float64(n.AttrFloat("mask_filter_value", -10000)))
	}
	if ab := p.attnBias; ab != nil {
		if bias == nil {
			bias = ab
		} else {
			bias = b.Add(bias, ab)
		}
	}
	causal := n.AttrInt("unidirectional", 0) != 0
	var qpos *graph.Value
	if causal {
		// The kernels mask causally only when S > 1: a single query sees
		// every key, as if it stood at the last position T − 1 (which
		// differs from P only for cross-attention).
		past := b.Int0(0)
		if p.pastK != nil {
			past = b.Gather(b.Shape(p.pastK), b.Int0(2), 0)
		}
		start := b.Where(b.Equal(seq, b.Int0(1)), b.Sub(total, b.Int0(1)), past)
		qpos = b.Range(start, b.Add(start, seq), b.Int0(1))
	}
	scale := float64(n.AttrFloat("scale", 0))
	if scale == 0 { // 1/√H of the query and key heads, whatever V's head size
		scale = 1 / math.Sqrt(float64(p.head))
	}
	out = attend(b, p.qh, kh, vh, attention{
		heads: p.heads, head: p.vHead, scale: scale,
		causal: causal, window: -1, qpos: qpos, total: total, bias: bias,
	})
	if err := b.Err(); err != nil {
		return nil, nil, nil, err
	}
	return out, kh, vh, nil
}

// maskBias turns a mask into the bias the kernels add to the scores: 0
// for a key kept, filter for one masked, shaped to broadcast over
// [B, N, S, T]. Its forms (int32):
//   - [B, T] or [B, S, T], 1 keeps (any value > 0) and 0 masks;
//   - [B], each row's length: keys j ≥ len[b] masked (right padding);
//   - [2B], lengths then starts: keys j < start[b] masked too (left
//     padding);
//   - [3B + 2]: ORT 1.29's CPU Attention kernel reads its first B values
//     as lengths and no more (measured), and so does this.
func maskBias(b *opb.Builder, mask, like, total *graph.Value, filter float64) *graph.Value {
	m := b.Cast(mask, graph.Int64)
	var keep *graph.Value
	axes := []int64{1, 2} // [B, T] → [B, 1, 1, T]
	switch b.Inf.Rank(mask) {
	case 1:
		// The lengths are the first B values; the starts the next B of a
		// [2B] mask, else zeros (decided at run time, as B may be symbolic;
		// mask ++ zeros keeps the slice in range).
		batch := b.DimOf(like, 0)
		twice := b.Add(batch, batch)
		ends := b.SliceT(m, b.Ints(0), batch, b.Ints(0))
		next := b.SliceT(b.Concat(0, m, b.Sub(m, m)), batch, twice, b.Ints(0))
		starts := b.Where(b.Equal(b.Size(m), twice), next, b.Sub(ends, ends))
		j := b.Range(b.Int0(0), total, b.Int0(1)) // [T]
		keep = b.And(b.Less(j, b.Unsqueeze(ends, 1)), b.Not(b.Less(j, b.Unsqueeze(starts, 1))))
	case 3:
		axes = []int64{1} // [B, S, T] → [B, 1, S, T]
		fallthrough
	default:
		keep = b.Greater(m, b.Int0(0))
	}
	return b.Unsqueeze(b.Where(keep, b.K(0, like), b.K(filter, like)), axes...)
}
