package trainstep

// Part of pass "canonicalize": com.microsoft GroupQueryAttention, the
// attention of onnxruntime-genai's model builder, and com.microsoft
// RotaryEmbedding (its DML graphs' rotary), decomposed into standard ONNX
// ops, which autodiff differentiates (ORT has no gradient for the contrib
// ops, and their kernels exist for inference only).
//
// Semantics (ORT's ContribOperators documentation and CPU kernel, facts
// only): query [B, S, H·D] (or packed [B, S, (H + 2·Hkv)·D] with key and
// value absent), key and value [B, S, Hkv·D], optional past_key and
// past_value [B, Hkv, P, D] (BNSH); with do_rotary, query and key are
// rotated at positions P, P+1, ... (or position_ids) by cos_cache and
// sin_cache [max_len, r/2] — halves of the first r dims, or pairs with
// rotary_interleaved; r < D rotates only the first r dims; K and V are
// appended to the past (present_key/present_value [B, Hkv, P+S, D]); each
// group of H/Hkv query heads reads one K/V head; scores are
// scale·Q·Kᵀ (scale 1/√D by default), softcapped as c·tanh(x/c) when
// softcap > 0, masked causally (query i sees keys j ≤ P + i) and, with
// local_window_size w ≥ 0, to the w keys ending at P + i (what ORT
// 1.29's CPU kernel computes, measured: TestGQADecompositionMatchesORT);
// softmax; times V.
//
// seqlens_k and total_sequence_length are not read: they say where each
// row's tokens end, and with right padding (how the builder's models and
// loracc's batches pad) a query row within its sequence never sees a key
// past its own position, so the causal mask already excludes padding.
// Rows past a sequence's end (padding) get finite values here where ORT's
// kernel may give others; nothing the loss counts reads them.
//
// Not supported (one error naming the attribute or input): smooth_softmax
// and head_sink, quantized caches (k_quant_type, v_quant_type,
// kv_cache_bit_width, k_scale, v_scale), qk_output and the output_qk
// output, attention_bias, q/k norm weights, sliding_window_cache, and
// causal = 0 with a local window.

import (
	"fmt"
	"math"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// GQA input slots.
const (
	gqaQuery = iota
	gqaKey
	gqaValue
	gqaPastKey
	gqaPastValue
	gqaSeqlensK
	gqaTotalSeqLen
	gqaCos
	gqaSin
	gqaPositionIDs
	gqaAttentionBias
	gqaHeadSink
	gqaKScale
	gqaVScale
	gqaQNorm
	gqaKNorm
)

// Decompose replaces the contrib ops that have no gradient rule by
// standard ops computing the same (com.microsoft GroupQueryAttention,
// RotaryEmbedding, MultiHeadAttention, Attention and GatherBlockQuantized),
// and returns how
// many it replaced. Pass canonicalize runs it first; it is exported for
// the finite-difference tests of the decompositions.
func Decompose(m *graph.Model) (int, error) {
	count := 0
	for _, d := range []struct {
		op string
		fn func(*graph.Model, *graph.Node) error
	}{
		{"GroupQueryAttention", decomposeGQA},
		{"RotaryEmbedding", decomposeRotary}, // the model builder's DML graphs' rotary
		{"MultiHeadAttention", decomposeMHA}, // mha.go
		{"Attention", decomposeAttention},    // attention.go
		// Last, but with an inference rule (infer/index.go), so the
		// attention decompositions still see the shape of the embedding
		// it feeds them.
		{"GatherBlockQuantized", decomposeGBQ}, // gbq.go
	} {
		for _, n := range append([]*graph.Node(nil), m.Graph.Nodes...) {
			if n.Op != d.op || n.Domain != "com.microsoft" || n.Graph() == nil {
				continue
			}
			err := fmt.Errorf("the decomposition needs opset 13 (Unsqueeze, Slice and Split with input axes; the model has %d)", m.OpsetVersion(""))
			if m.OpsetVersion("") >= 13 {
				err = d.fn(m, n)
			}
			if err != nil {
				return count, fmt.Errorf("node %q (com.microsoft %s): %w", n.Name, d.op, err)
			}
			count++
		}
	}
	return count, nil
}

// decomposeRotary: input [B, S, N·H] or [B, N, S, H], position_ids [B, S]
// (or [1], an offset: positions offset..offset+S−1), cos_cache and
// sin_cache [max_len, r/2]; the first r dims of each head rotated by
// halves (or interleaved pairs), the rest passed through.
func decomposeRotary(m *graph.Model, n *graph.Node) error {
	if s := n.AttrFloat("scale", 1); s != 1 {
		return fmt.Errorf("attribute scale=%g is not supported for training", s)
	}
	if n.AttrInt("is_packed_batching", 0) != 0 {
		return fmt.Errorf("attribute is_packed_batching=1 is not supported for training")
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	x, pos, cosCache, sinCache := input(n, 0), input(n, 1), input(n, 2), input(n, 3)
	if x == nil || pos == nil || cosCache == nil || sinCache == nil {
		return fmt.Errorf("input, position_ids, cos_cache and sin_cache are all required")
	}
	half := lastDim(inf, cosCache)
	r := n.AttrInt("rotary_embedding_dim", 0)
	if r == 0 {
		r = 2 * half
	}
	rank, width := inf.Rank(x), lastDim(inf, x)
	head := width
	if rank == 3 {
		head = 2 * half
		if nh := n.AttrInt("num_heads", 0); nh > 0 && width > 0 {
			head = width / nh
		}
	}
	if half <= 0 || r != 2*half || head <= 0 || r > head || (rank == 3 && width%head != 0) || (rank != 3 && rank != 4) {
		return fmt.Errorf("input of rank %d and last dim %d, cos_cache's last dim %d, rotary_embedding_dim %d: not a rotary this decomposition knows", rank, width, half, n.AttrInt("rotary_embedding_dim", 0))
	}
	// cos, sin: [.., S, r/2] aligned with the sequence axis of the heads.
	var cos, sin *graph.Value
	if inf.Rank(pos) == 2 {
		cos, sin = b.Gather(cosCache, pos, 0), b.Gather(sinCache, pos, 0) // [B, S, r/2]
		axis := int64(1)                                                  // [B, 1, S, r/2] for BNSH
		if rank == 3 {
			axis = 2 // [B, S, 1, r/2] for BSNH
		}
		cos, sin = b.Unsqueeze(cos, axis), b.Unsqueeze(sin, axis)
	} else {
		seqAxis := int64(2)
		if rank == 3 {
			seqAxis = 1
		}
		start := b.Squeeze(b.Slice(pos, 0, 1, 0), 0)
		idx := b.Range(start, b.Add(start, b.Gather(b.Shape(x), b.Int0(seqAxis), 0)), b.Int0(1))
		cos, sin = b.Gather(cosCache, idx, 0), b.Gather(sinCache, idx, 0) // [S, r/2]
		if rank == 3 {
			cos, sin = b.Unsqueeze(cos, 1), b.Unsqueeze(sin, 1) // [S, 1, r/2]
		}
	}
	xh := x
	if rank == 3 {
		xh = b.Reshape(x, b.Ints(0, 0, -1, head))
	}
	out := rotate(b, xh, cos, sin, head, r, n.AttrInt("interleaved", 0) != 0)
	if rank == 3 {
		out = b.Reshape(out, b.Ints(0, 0, width))
	}
	if err := b.Err(); err != nil {
		return err
	}
	return replaceOutputs(m.Graph, n, out)
}

// numHeads is n's num_heads attribute, which must be positive.
func numHeads(n *graph.Node) (int64, error) {
	heads := n.AttrInt("num_heads", 0)
	if heads <= 0 {
		return 0, fmt.Errorf("num_heads %d: want a positive count", heads)
	}
	return heads, nil
}

// input is n's input i, nil when absent or omitted.
func input(n *graph.Node, i int) *graph.Value {
	if i >= n.NumInputs() {
		return nil
	}
	return n.Input(i)
}

func decomposeGQA(m *graph.Model, n *graph.Node) error {
	for _, a := range []string{"k_quant_type", "v_quant_type"} {
		if at := n.Attr(a); at != nil && string(at.S) != "NONE" {
			return fmt.Errorf("attribute %s=%q: quantized KV caches are not supported for training", a, at.S)
		}
	}
	for _, a := range []string{"kv_cache_bit_width", "qk_output", "sliding_window_cache"} {
		if n.AttrInt(a, 0) != 0 {
			return fmt.Errorf("attribute %s=%d is not supported for training", a, n.AttrInt(a, 0))
		}
	}
	if v := n.AttrInt("smooth_softmax", -1); v > 0 {
		return fmt.Errorf("attribute smooth_softmax=%d is not supported for training", v)
	}
	for _, in := range []struct {
		slot int
		name string
	}{{gqaAttentionBias, "attention_bias"}, {gqaHeadSink, "head_sink"}, {gqaKScale, "k_scale"}, {gqaVScale, "v_scale"}, {gqaQNorm, "q_norm_weight"}, {gqaKNorm, "k_norm_weight"}} {
		if input(n, in.slot) != nil {
			return fmt.Errorf("input %s is not supported for training", in.name)
		}
	}
	if len(n.Outputs()) > 3 && n.Output(3) != nil {
		return fmt.Errorf("output output_qk is not supported for training")
	}
	causal := n.AttrInt("causal", 1) != 0
	window := n.AttrInt("local_window_size", -1)
	if !causal && window >= 0 {
		return fmt.Errorf("attribute local_window_size=%d needs causal=1", window)
	}
	heads, kvHeads := n.AttrInt("num_heads", 0), n.AttrInt("kv_num_heads", 0)
	if heads <= 0 || kvHeads <= 0 || heads%kvHeads != 0 {
		return fmt.Errorf("num_heads %d and kv_num_heads %d: want positive, num_heads a multiple of kv_num_heads", heads, kvHeads)
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	q, k, v := input(n, gqaQuery), input(n, gqaKey), input(n, gqaValue)
	width := lastDim(inf, q)
	packed := k == nil && v == nil
	var head int64
	switch {
	case packed && width > 0 && width%(heads+2*kvHeads) == 0:
		head = width / (heads + 2*kvHeads)
		parts := b.Split(q, -1, heads*head, kvHeads*head, kvHeads*head)
		q, k, v = parts[0], parts[1], parts[2]
	case !packed && k != nil && v != nil && width > 0 && width%heads == 0:
		head = width / heads
	default:
		return fmt.Errorf("query's last dim %d does not split into num_heads %d (and 2·kv_num_heads %d when packed) heads; key and value must both be given or both be absent", width, heads, kvHeads)
	}
	// [B, S, N·D] → [B, N, S, D]
	bnsh := func(x *graph.Value, nh int64) *graph.Value {
		return b.Transpose(b.Reshape(x, b.Ints(0, 0, nh, head)), 0, 2, 1, 3)
	}
	qh, kh, vh := bnsh(q, heads), bnsh(k, kvHeads), bnsh(v, kvHeads)
	pastK, pastV := input(n, gqaPastKey), input(n, gqaPastValue)
	if (pastK == nil) != (pastV == nil) {
		return fmt.Errorf("past_key and past_value must both be given or both be absent")
	}
	// P, the past length, and the query positions P..P+S−1.
	past := b.Int0(0)
	if pastK != nil {
		past = b.Gather(b.Shape(pastK), b.Int0(2), 0)
	}
	seq := b.Gather(b.Shape(qh), b.Int0(2), 0)
	total := b.Add(past, seq)
	one := b.Int0(1)
	qpos := b.Range(past, total, one) // [S]
	if n.AttrInt("do_rotary", 0) != 0 {
		cosCache, sinCache := input(n, gqaCos), input(n, gqaSin)
		if cosCache == nil || sinCache == nil {
			return fmt.Errorf("do_rotary=1 needs cos_cache and sin_cache")
		}
		half := lastDim(inf, cosCache)
		if half <= 0 || 2*half > head {
			return fmt.Errorf("cos_cache's last dim %d: want a known size of at most head size %d / 2", half, head)
		}
		var cos, sin *graph.Value
		if pos := input(n, gqaPositionIDs); pos != nil {
			// [B, S] → [B, 1, S, r/2]
			cos = b.Unsqueeze(b.Gather(cosCache, pos, 0), 1)
			sin = b.Unsqueeze(b.Gather(sinCache, pos, 0), 1)
		} else {
			cos, sin = b.Gather(cosCache, qpos, 0), b.Gather(sinCache, qpos, 0) // [S, r/2]
		}
		interleaved := n.AttrInt("rotary_interleaved", 0) != 0
		qh = rotate(b, qh, cos, sin, head, 2*half, interleaved)
		kh = rotate(b, kh, cos, sin, head, 2*half, interleaved)
	}
	if pastK != nil {
		kh, vh = b.Concat(2, pastK, kh), b.Concat(2, pastV, vh)
	}
	presentK, presentV := kh, vh
	if g := heads / kvHeads; g > 1 { // [B, Hkv, T, D] → [B, H, T, D], each K/V head g times in a row
		rep := func(x *graph.Value) *graph.Value {
			return b.Reshape(b.Expand(b.Unsqueeze(x, 2), b.Ints(1, 1, g, 1, 1)), b.Ints(0, heads, -1, head))
		}
		kh, vh = rep(kh), rep(vh)
	}
	out := attend(b, qh, kh, vh, attention{
		heads: heads, head: head, scale: float64(n.AttrFloat("scale", 0)), softcap: float64(n.AttrFloat("softcap", 0)),
		causal: causal, window: window, qpos: qpos, total: total,
	})
	if err := b.Err(); err != nil {
		return err
	}
	return replaceOutputs(m.Graph, n, out, presentK, presentV)
}

// replaceOutputs makes ws[i] take over n's output i (uses, graph-output
// slot, name and type), then removes n. A w that is one of n's inputs
// (MultiHeadAttention's key as its present) takes over through an
// Identity, so that the value the model named keeps its name.
func replaceOutputs(g *graph.Graph, n *graph.Node, ws ...*graph.Value) error {
	type rename struct {
		v    *graph.Value
		name string
		typ  *graph.TensorType
	}
	var renames []rename
	ib := &graph.Builder{G: g, Prefix: n.Name + "/decomposed"}
	for i, w := range ws {
		if i >= len(n.Outputs()) || n.Output(i) == nil {
			continue
		}
		if slices.Contains(n.Inputs(), w) {
			w = ib.Op("Identity", w.Name+"/copy", []*graph.Value{w})
		}
		old := n.Output(i)
		old.ReplaceAllUsesWith(w)
		for k, o := range g.Outputs {
			if o == old {
				g.Outputs[k] = w
			}
		}
		renames = append(renames, rename{w, old.Name, old.Type})
	}
	if err := g.RemoveNode(n); err != nil {
		return err
	}
	for _, r := range renames {
		if err := r.v.Rename(r.name); err != nil {
			return err
		}
		if r.typ != nil {
			r.v.Type = r.typ
		}
	}
	return nil
}

// attention describes the core both attention decompositions share.
type attention struct {
	heads, head    int64
	scale, softcap float64 // scale 0: 1/√head; softcap 0: none
	// causal masks key j > qpos[i] (and, with window ≥ 0, keys j ≤
	// qpos[i] − window); qpos are the queries' positions [S] among the
	// total keys.
	causal      bool
	window      int64
	qpos, total *graph.Value
	// bias is added to the scores ([.., S, T], broadcasting), or nil.
	bias *graph.Value
}

// attend is softmax(scale·Q·Kᵀ, softcapped, masked, + bias)·V for heads
// [B, N, S, D] (K and V with as many heads as Q), as [B, S, N·D].
func attend(b *opb.Builder, qh, kh, vh *graph.Value, a attention) *graph.Value {
	scale := a.scale
	if scale == 0 {
		scale = 1 / math.Sqrt(float64(a.head))
	}
	scores := b.MatMul(b.Mul(qh, b.K(scale, qh)), b.Transpose(kh, 0, 1, 3, 2)) // [B, N, S, T]
	if c := a.softcap; c > 0 {
		scores = b.Mul(b.Op("Tanh", []*graph.Value{b.Mul(scores, b.K(1/c, scores))}), b.K(c, scores))
	}
	if a.causal {
		i := b.Unsqueeze(a.qpos, 1)                 // [S, 1]
		j := b.Range(b.Int0(0), a.total, b.Int0(1)) // [T]
		allowed := b.Op("LessOrEqual", []*graph.Value{j, i})
		if a.window >= 0 {
			allowed = b.And(allowed, b.Op("Greater", []*graph.Value{j, b.Sub(i, b.Int0(a.window))}))
		}
		scores = b.Add(scores, b.Where(allowed, b.K(0, scores), b.K(-math.MaxFloat32, scores)))
	}
	if a.bias != nil {
		scores = b.Add(scores, a.bias)
	}
	probs := b.Op("Softmax", []*graph.Value{scores}, graph.AttrI("axis", -1))
	return b.Reshape(b.Transpose(b.MatMul(probs, vh), 0, 2, 1, 3), b.Ints(0, 0, a.heads*a.head))
}

// lastDim is v's last dim when known, else 0.
func lastDim(inf *infer.Inferer, v *graph.Value) int64 {
	return dimAt(inf, v, -1)
}

// dimAt is v's dim i (negative counts from the end) when known, else 0.
func dimAt(inf *infer.Inferer, v *graph.Value, i int) int64 {
	d := inf.Info(v).Dims
	if i < 0 {
		i += len(d)
	}
	if i < 0 || i >= len(d) || !d[i].Known() {
		return 0
	}
	return d[i].Value
}

// rotate applies the rotary embedding to the first r dims of x [.., S, D]
// with cos and sin [.., S, r/2]: halves (x₁·c − x₂·s, x₂·c + x₁·s), or
// with interleaved the pairs (x₂ᵢ, x₂ᵢ₊₁) the same way.
func rotate(b *opb.Builder, x, cos, sin *graph.Value, head, r int64, interleaved bool) *graph.Value {
	xr := x
	if r < head {
		xr = b.Slice(x, 0, r, -1)
	}
	var out *graph.Value
	if interleaved {
		step := b.Ints(2)
		even := b.SliceT(xr, b.Ints(0), b.Ints(r), b.Ints(-1), step)
		odd := b.SliceT(xr, b.Ints(1), b.Ints(r), b.Ints(-1), step)
		e := b.Sub(b.Mul(even, cos), b.Mul(odd, sin))
		o := b.Add(b.Mul(odd, cos), b.Mul(even, sin))
		pairs := b.Concat(-1, b.Unsqueeze(e, -1), b.Unsqueeze(o, -1)) // [.., S, r/2, 2]
		out = b.Reshape(pairs, b.Ints(0, 0, 0, r))
	} else {
		x1, x2 := b.Slice(xr, 0, r/2, -1), b.Slice(xr, r/2, r, -1)
		out = b.Concat(-1, b.Sub(b.Mul(x1, cos), b.Mul(x2, sin)), b.Add(b.Mul(x2, cos), b.Mul(x1, sin)))
	}
	if r < head {
		out = b.Concat(-1, out, b.Slice(x, r, head, -1))
	}
	return out
}
