package testmodels

import (
	"fmt"
	"math"
	"strconv"

	"github.com/loracc/loracc/graph"
)

// LlamaConfig sizes a tiny Llama-style causal LM. The zero value of a
// field takes the default of DefaultLlama.
type LlamaConfig struct {
	Vocab        int // vocabulary size (embedding rows, logits width)
	Hidden       int // model width
	Layers       int // decoder layers
	Heads        int // query heads
	KVHeads      int // key/value heads; fewer than Heads is grouped-query attention
	Intermediate int // MLP width
	// Cache adds Optimum's KV-cache interface: past_key_values.N.key/value
	// inputs and present.N.key/value outputs.
	Cache bool
	// ScaledInit draws each matrix uniform in ±1/√rows (PyTorch's Linear
	// bound) instead of ±0.5, so that activations and the loss stay O(1)
	// at benchmark widths (4096 and up); the tiny test models keep ±0.5.
	ScaledInit bool
	// Int4 makes the seven projections of every layer com.microsoft
	// MatMulNBits (4 bits, blocks of 32, the default zero point 8), as
	// ONNX Runtime's quantizer writes a QLoRA-style base; the embedding
	// and lm_head stay float. Codes are random, each block's scale the
	// float init's bound / 8 (±10 %), so weights span that bound.
	Int4 bool
	// Opset is the default domain's opset, 18 when 0 (ReduceMean's axes
	// an input, as torch.onnx writes it); 21 lets an Int4 base's backward
	// dequantize with one DequantizeLinear (quant.DequantizeOp).
	Opset int64
}

// DefaultLlama is the tiny Llama the generate tests use: its vocabulary is
// that of the trained Unigram tokenizer under testdata/tokenizer (1256
// pieces), so every id that tokenizer makes is a valid input. A function,
// not a variable, so no caller can change another's defaults.
func DefaultLlama() LlamaConfig {
	return LlamaConfig{Vocab: 1256, Hidden: 32, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 64}
}

// Fixed numerics of the Llama builder (Llama-2/3's values).
const (
	llamaOpset   = 18 // ReduceMean with axes as an input, as torch.onnx writes it now
	llamaEps     = 1e-6
	llamaRopeExp = 10000.0
)

func (c LlamaConfig) withDefaults() LlamaConfig {
	d := DefaultLlama()
	set := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	set(&c.Vocab, d.Vocab)
	set(&c.Hidden, d.Hidden)
	set(&c.Layers, d.Layers)
	set(&c.Heads, d.Heads)
	set(&c.KVHeads, d.KVHeads)
	set(&c.Intermediate, d.Intermediate)
	return c
}

func (c LlamaConfig) check() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"vocab", c.Vocab}, {"hidden", c.Hidden}, {"layers", c.Layers}, {"heads", c.Heads}, {"kv heads", c.KVHeads}, {"intermediate", c.Intermediate}} {
		if f.v < 0 || f.v > 1<<20 {
			return fmt.Errorf("testmodels: llama: %s %d: want 1 to 2^20", f.name, f.v)
		}
	}
	if c.Hidden%c.Heads != 0 || (c.Hidden/c.Heads)%2 != 0 {
		return fmt.Errorf("testmodels: llama: hidden %d must split into %d heads of an even size (rotary halves)", c.Hidden, c.Heads)
	}
	if c.Heads%c.KVHeads != 0 {
		return fmt.Errorf("testmodels: llama: %d heads do not share %d kv heads evenly", c.Heads, c.KVHeads)
	}
	return nil
}

// Dims of the Llama's inputs and outputs, named as Optimum's exports name
// them so that generate is tested against the names real exports carry.
var (
	lBatch = graph.Dim{Param: "batch_size"}
	lSeq   = graph.Dim{Param: "sequence_length"}
	lPast  = graph.Dim{Param: "past_sequence_length"}
	lTotal = graph.Dim{Param: "past_sequence_length + sequence_length"}
)

// Llama builds a Llama-style decoder with standard ONNX ops only, in the
// shape of an Optimum text-generation export, so that generation, LoRA
// targets and the KV cache can be tested without a real checkpoint:
//
//	inputs   input_ids [batch_size, sequence_length] int64
//	         attention_mask [batch_size, past+seq] int64 (1 = attend)
//	         position_ids [batch_size, sequence_length] int64
//	         past_key_values.N.key/value [batch_size, kv, past, head_dim] (Cache)
//	outputs  logits [batch_size, sequence_length, vocab]
//	         present.N.key/value [batch_size, kv, past+seq, head_dim] (Cache)
//
// Each layer is h += o_proj(attn(rmsnorm(h))); h += down(silu(gate(x))·up(x))
// on x = rmsnorm(h), as HF's LlamaDecoderLayer computes it. RMSNorm is
// spelled out as torch.onnx writes it (Pow, ReduceMean, Add, Sqrt,
// Reciprocal, Mul, Mul by the weight); rotary embeddings take the
// rotate_half form with cos/sin from position_ids; keys and values are
// cached after RoPE and before the kv heads are repeated (Unsqueeze,
// Expand, Reshape), as HF caches them. Without Cache the graph is the same
// with an empty past: the two variants compute the same logits.
//
// Projections are MatMuls with [in, out] weights named like PEFT's module
// paths ("model.layers.0.self_attn.q_proj.weight"), so adapter targets
// read "model.layers.0.self_attn.q_proj".
func Llama(cfg LlamaConfig) (*graph.Model, error) {
	cfg = cfg.withDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	name := "llama"
	if cfg.Cache {
		name = "llama_with_past"
	}
	opset := cfg.Opset
	if opset == 0 {
		opset = llamaOpset
	}
	if opset < llamaOpset {
		return nil, fmt.Errorf("testmodels: llama: opset %d: want at least %d", opset, llamaOpset)
	}
	m := graph.NewModel(opset)
	m.Graph.Name = name
	if cfg.Int4 {
		m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	}
	l := &llama{cfg: cfg, g: m.Graph, c: consts{b: &graph.Builder{G: m.Graph}}, headDim: cfg.Hidden / cfg.Heads}
	if err := l.build(); err != nil {
		return nil, err
	}
	return m, nil
}

// llama holds what the layers share while the graph is built.
type llama struct {
	cfg     LlamaConfig
	g       *graph.Graph
	c       consts
	headDim int

	// Shared constants and per-run values.
	sq, eps, axisLast, negBig   *graph.Value
	cos, sin                    *graph.Value // [batch, 1, seq, head_dim]
	allowed                     *graph.Value // [batch, 1, seq, past+seq] bool
	qHeads, kvHeads, merge      *graph.Value // Reshape shapes
	repeat, repeatShape, halves *graph.Value
	scale                       *graph.Value
}

func (l *llama) scalar(name string, x float32) *graph.Value {
	return l.c.add(graph.NewFloatTensor(name, graph.Float, nil, []float32{x}))
}

func (l *llama) build() error {
	cfg, g := l.cfg, l.g
	b := l.c.b
	bound := func(rows int64) float32 {
		if cfg.ScaledInit {
			return float32(1 / math.Sqrt(float64(rows)))
		}
		return 0.5
	}
	weight := func(name string, dt graph.DataType, rows, cols int64) (*graph.Tensor, error) {
		return uniform(name, dt, []int64{rows, cols}, -bound(rows), bound(rows))
	}
	proj := func(name string, rows, cols int64) linear {
		if !cfg.Int4 {
			return linear{w: l.c.add(weight(name+".weight", graph.Float, rows, cols))}
		}
		q, s, err := nbitsRandom(name+".weight", rows, cols, bound(rows))
		return linear{q: l.c.add(q, err), s: l.c.add(s, err), in: rows, out: cols}
	}
	embed := l.c.add(weight("model.embed_tokens.weight", graph.Float, int64(cfg.Vocab), int64(cfg.Hidden)))
	l.sq = l.scalar("rms.two", 2)
	l.eps = l.scalar("rms.eps", llamaEps)
	l.negBig = l.scalar("attn.mask_min", -math.MaxFloat32)
	l.scale = l.scalar("attn.scale", float32(1/math.Sqrt(float64(l.headDim))))
	l.axisLast = b.Int64s("axes.last", []int64{-1})
	hd := int64(l.headDim)
	l.qHeads = b.Int64s("attn.q_heads_shape", []int64{0, 0, int64(cfg.Heads), hd})
	l.kvHeads = b.Int64s("attn.kv_heads_shape", []int64{0, 0, int64(cfg.KVHeads), hd})
	l.merge = b.Int64s("attn.merge_shape", []int64{0, 0, int64(cfg.Hidden)})
	l.repeat = b.Int64s("attn.repeat_kv", []int64{1, 1, int64(cfg.Heads / cfg.KVHeads), 1, 1})
	l.repeatShape = b.Int64s("attn.repeat_kv_shape", []int64{0, int64(cfg.Heads), -1, hd})
	l.halves = b.Int64s("rope.half", []int64{hd / 2})
	invFreq := make([]float32, l.headDim/2)
	for i := range invFreq {
		invFreq[i] = float32(1 / math.Pow(llamaRopeExp, float64(2*i)/float64(l.headDim)))
	}
	inv := l.c.add(graph.NewFloatTensor("rope.inv_freq", graph.Float, []int64{int64(len(invFreq))}, invFreq))
	type layerW struct {
		ln1, ln2                   *graph.Value
		q, k, v, o, gate, up, down linear
	}
	ws := make([]layerW, cfg.Layers)
	kvOut := int64(cfg.KVHeads * l.headDim)
	for i := range ws {
		p := "model.layers." + strconv.Itoa(i) + "."
		H, I := int64(cfg.Hidden), int64(cfg.Intermediate)
		ws[i] = layerW{
			ln1:  l.c.add(uniform(p+"input_layernorm.weight", graph.Float, []int64{H}, 0.9, 1.1)),
			ln2:  l.c.add(uniform(p+"post_attention_layernorm.weight", graph.Float, []int64{H}, 0.9, 1.1)),
			q:    proj(p+"self_attn.q_proj", H, H),
			k:    proj(p+"self_attn.k_proj", H, kvOut),
			v:    proj(p+"self_attn.v_proj", H, kvOut),
			o:    proj(p+"self_attn.o_proj", H, H),
			gate: proj(p+"mlp.gate_proj", H, I),
			up:   proj(p+"mlp.up_proj", H, I),
			down: proj(p+"mlp.down_proj", I, H),
		}
	}
	normW := l.c.add(uniform("model.norm.weight", graph.Float, []int64{int64(cfg.Hidden)}, 0.9, 1.1))
	head := l.c.add(weight("lm_head.weight", graph.Float, int64(cfg.Hidden), int64(cfg.Vocab)))
	if l.c.err != nil {
		return l.c.err
	}

	ids := g.AddInput("input_ids", tensorType(graph.Int64, lBatch, lSeq))
	maskDim := lSeq
	if cfg.Cache {
		maskDim = lTotal
	}
	mask := g.AddInput("attention_mask", tensorType(graph.Int64, lBatch, maskDim))
	pos := g.AddInput("position_ids", tensorType(graph.Int64, lBatch, lSeq))
	kvType := func() *graph.TensorType {
		return tensorType(graph.Float, lBatch, fixed(int64(cfg.KVHeads)), lPast, fixed(hd))
	}
	pasts := make([][2]*graph.Value, cfg.Layers)
	if cfg.Cache {
		for i := range pasts {
			n := strconv.Itoa(i)
			pasts[i][0] = g.AddInput("past_key_values."+n+".key", kvType())
			pasts[i][1] = g.AddInput("past_key_values."+n+".value", kvType())
		}
	}

	e := &graph.Builder{G: g, Prefix: "model.embed_tokens"}
	h := e.Op("Gather", "model.embed_tokens.out", []*graph.Value{embed, ids}, graph.AttrI("axis", 0))
	l.rope(pos, inv)
	l.mask(ids, mask)
	var presents [][2]*graph.Value
	for i, w := range ws {
		p := "model.layers." + strconv.Itoa(i)
		x := l.rmsNorm(p+".input_layernorm", h, w.ln1)
		a, kv := l.attention(p+".self_attn", x, w.q, w.k, w.v, w.o, pasts[i])
		presents = append(presents, kv)
		res := &graph.Builder{G: g, Prefix: p}
		h = res.Op("Add", p+".attn_residual", []*graph.Value{h, a})
		x = l.rmsNorm(p+".post_attention_layernorm", h, w.ln2)
		h = res.Op("Add", p+".mlp_residual", []*graph.Value{h, l.mlp(p+".mlp", x, w.gate, w.up, w.down)})
	}
	h = l.rmsNorm("model.norm", h, normW)
	lm := &graph.Builder{G: g, Prefix: "lm_head"}
	logits := lm.Op("MatMul", "logits", []*graph.Value{h, head})
	logits.Type = tensorType(graph.Float, lBatch, lSeq, fixed(int64(cfg.Vocab)))
	g.AddOutput(logits)
	if cfg.Cache {
		for i, kv := range presents {
			n := strconv.Itoa(i)
			for j, suffix := range []string{".key", ".value"} {
				out := (&graph.Builder{G: g, Prefix: "present." + n}).Op("Identity", "present."+n+suffix, []*graph.Value{kv[j]})
				out.Type = tensorType(graph.Float, lBatch, fixed(int64(cfg.KVHeads)), lTotal, fixed(hd))
				g.AddOutput(out)
			}
		}
	}
	return nil
}

// rmsNorm is w · x / sqrt(mean(x²) + eps) over the last axis.
func (l *llama) rmsNorm(prefix string, x, w *graph.Value) *graph.Value {
	b := &graph.Builder{G: l.g, Prefix: prefix}
	p := b.Op("Pow", prefix+".pow", []*graph.Value{x, l.sq})
	m := b.Op("ReduceMean", prefix+".mean", []*graph.Value{p, l.axisLast}, graph.AttrI("keepdims", 1))
	m = b.Op("Add", prefix+".add_eps", []*graph.Value{m, l.eps})
	m = b.Op("Sqrt", prefix+".sqrt", []*graph.Value{m})
	m = b.Op("Reciprocal", prefix+".rsqrt", []*graph.Value{m})
	y := b.Op("Mul", prefix+".normed", []*graph.Value{x, m})
	return b.Op("Mul", prefix+".out", []*graph.Value{w, y})
}

// rope computes cos and sin of position × inv_freq once for all layers,
// [batch, 1, seq, head_dim] with the frequencies repeated over both halves
// (HF's emb = cat(freqs, freqs)).
func (l *llama) rope(pos, inv *graph.Value) {
	b := &graph.Builder{G: l.g, Prefix: "rope"}
	p := b.Op("Cast", "rope.pos", []*graph.Value{pos}, graph.AttrI("to", int64(graph.Float)))
	p = b.Op("Unsqueeze", "rope.pos3", []*graph.Value{p, l.axisLast})
	f := b.Op("Mul", "rope.freqs", []*graph.Value{p, inv})
	f = b.Op("Concat", "rope.emb", []*graph.Value{f, f}, graph.AttrI("axis", -1))
	one := b.Int64s("rope.head_axis", []int64{1})
	l.cos = b.Op("Unsqueeze", "rope.cos", []*graph.Value{b.Op("Cos", "rope.cos3", []*graph.Value{f}), one})
	l.sin = b.Op("Unsqueeze", "rope.sin", []*graph.Value{b.Op("Sin", "rope.sin3", []*graph.Value{f}), one})
}

// mask is where query i (absolute position past+i) may read key j: j ≤
// past+i and attention_mask[b, j] = 1. past is the mask's length minus the
// sequence length, so the same graph serves a prompt and one-token steps.
func (l *llama) mask(ids, attn *graph.Value) {
	b := &graph.Builder{G: l.g, Prefix: "mask"}
	zero := b.Int64s("mask.zero", []int64{0})
	one := b.Int64s("mask.one", []int64{1})
	sh := func(v *graph.Value, name string) *graph.Value {
		s := b.Op("Shape", name+".shape", []*graph.Value{v})
		s = b.Op("Gather", name+".len1", []*graph.Value{s, one}, graph.AttrI("axis", 0))
		return b.Op("Squeeze", name+".len", []*graph.Value{s, zero})
	}
	total := sh(attn, "mask.total")
	seqLen := sh(ids, "mask.seq")
	scalar := func(name string, xs int64) *graph.Value {
		return b.Const(graph.NewTensor(name, graph.Int64, nil, le64(xs)))
	}
	z, o := scalar("mask.start", 0), scalar("mask.step", 1)
	keys := b.Op("Range", "mask.keys", []*graph.Value{z, total, o})
	start := b.Op("Sub", "mask.past", []*graph.Value{total, seqLen})
	queries := b.Op("Range", "mask.queries", []*graph.Value{start, total, o})
	k := b.Op("Unsqueeze", "mask.keys_row", []*graph.Value{keys, zero})
	q := b.Op("Unsqueeze", "mask.queries_col", []*graph.Value{queries, one})
	causal := b.Op("LessOrEqual", "mask.causal", []*graph.Value{k, q})
	pad := b.Op("Cast", "mask.pad", []*graph.Value{attn}, graph.AttrI("to", int64(graph.Bool)))
	pad = b.Op("Unsqueeze", "mask.pad4", []*graph.Value{pad, b.Int64s("mask.pad_axes", []int64{1, 2})})
	l.allowed = b.Op("And", "mask.allowed", []*graph.Value{causal, pad})
}

func le64(x int64) []byte {
	raw := make([]byte, 8)
	for i := range raw {
		raw[i] = byte(uint64(x) >> (8 * i))
	}
	return raw
}

// attention returns o_proj of grouped-query attention on x and the layer's
// keys and values over past and new positions (what present carries).
func (l *llama) attention(prefix string, x *graph.Value, wq, wk, wv, wo linear, past [2]*graph.Value) (*graph.Value, [2]*graph.Value) {
	g := l.g
	b := &graph.Builder{G: g, Prefix: prefix}
	proj := func(name string, w linear, shape *graph.Value) *graph.Value {
		y := l.matmul(prefix+"."+name, x, w)
		y = b.Op("Reshape", prefix+"."+name+".heads", []*graph.Value{y, shape})
		return b.Op("Transpose", prefix+"."+name+".t", []*graph.Value{y}, graph.AttrIs("perm", 0, 2, 1, 3))
	}
	q := l.rotate(b, prefix+".q", proj("q_proj", wq, l.qHeads))
	k := l.rotate(b, prefix+".k", proj("k_proj", wk, l.kvHeads))
	v := proj("v_proj", wv, l.kvHeads)
	if past[0] != nil {
		k = b.Op("Concat", prefix+".k_all", []*graph.Value{past[0], k}, graph.AttrI("axis", 2))
		v = b.Op("Concat", prefix+".v_all", []*graph.Value{past[1], v}, graph.AttrI("axis", 2))
	}
	rep := func(name string, t *graph.Value) *graph.Value {
		if l.cfg.Heads == l.cfg.KVHeads {
			return t
		}
		u := b.Op("Unsqueeze", name+".u", []*graph.Value{t, b.Int64s(name+".axis", []int64{2})})
		u = b.Op("Expand", name+".expand", []*graph.Value{u, l.repeat})
		return b.Op("Reshape", name+".out", []*graph.Value{u, l.repeatShape})
	}
	kr, vr := rep(prefix+".repeat_k", k), rep(prefix+".repeat_v", v)
	kt := b.Op("Transpose", prefix+".k_t", []*graph.Value{kr}, graph.AttrIs("perm", 0, 1, 3, 2))
	s := b.Op("MatMul", prefix+".scores", []*graph.Value{q, kt})
	s = b.Op("Mul", prefix+".scaled", []*graph.Value{s, l.scale})
	s = b.Op("Where", prefix+".masked", []*graph.Value{l.allowed, s, l.negBig})
	p := b.Op("Softmax", prefix+".probs", []*graph.Value{s}, graph.AttrI("axis", -1))
	a := b.Op("MatMul", prefix+".context", []*graph.Value{p, vr})
	a = b.Op("Transpose", prefix+".context_t", []*graph.Value{a}, graph.AttrIs("perm", 0, 2, 1, 3))
	a = b.Op("Reshape", prefix+".merged", []*graph.Value{a, l.merge})
	return l.matmul(prefix+".o_proj", a, wo), [2]*graph.Value{k, v}
}

// linear is a projection's weight: a float [in, out] matrix w, or (Int4)
// MatMulNBits' packed codes q and scales s.
type linear struct {
	w, q, s *graph.Value
	in, out int64
}

// matmul is x times the projection named name (its node prefix, output
// name + ".out").
func (l *llama) matmul(name string, x *graph.Value, w linear) *graph.Value {
	if w.q == nil {
		return (&graph.Builder{G: l.g, Prefix: name}).Op("MatMul", name+".out", []*graph.Value{x, w.w})
	}
	nb := &graph.Builder{G: l.g, Prefix: name, Domain: "com.microsoft"}
	return nb.Op("MatMulNBits", name+".out", []*graph.Value{x, w.q, w.s},
		graph.AttrI("K", w.in), graph.AttrI("N", w.out), graph.AttrI("bits", 4), graph.AttrI("block_size", llamaBlock))
}

// llamaBlock is Int4's quantization block (along the input dim).
const llamaBlock = 32

// nbitsRandom is a random 4-bit MatMulNBits weight for an [in, out]
// projection: codes [out, blocks, 16] uniform in 0..15 (eight per draw) and
// one float32 scale a block, bound/8 within ±10 %, so that (code − 8)·scale
// spans ±bound.
func nbitsRandom(name string, in, out int64, bound float32) (*graph.Tensor, *graph.Tensor, error) {
	blocks := (in + llamaBlock - 1) / llamaBlock
	r := newRNG(name + "_Q4")
	packed := make([]byte, out*blocks*llamaBlock/2)
	for i := 0; i < len(packed); i += 8 {
		v := r.next()
		for j := 0; j < 8 && i+j < len(packed); j++ {
			packed[i+j] = byte(v >> (8 * j))
		}
	}
	scales := make([]float32, out*blocks)
	rs := newRNG(name + "_scales")
	for i := range scales {
		scales[i] = bound / 8 * rs.between(0.9, 1.1)
	}
	s, err := graph.NewFloatTensor(name+"_scales", graph.Float, []int64{out * blocks}, scales)
	return graph.NewTensor(name+"_Q4", graph.Uint8, []int64{out, blocks, llamaBlock / 2}, packed), s, err
}

// rotate applies rotary embeddings: t·cos + rotate_half(t)·sin, with
// rotate_half(t) = cat(-t[..., d/2:], t[..., :d/2]).
func (l *llama) rotate(b *graph.Builder, name string, t *graph.Value) *graph.Value {
	zero := b.Int64s(name+".rot_zero", []int64{0})
	end := b.Int64s(name+".rot_end", []int64{int64(l.headDim)})
	x1 := b.Op("Slice", name+".x1", []*graph.Value{t, zero, l.halves, l.axisLast})
	x2 := b.Op("Slice", name+".x2", []*graph.Value{t, l.halves, end, l.axisLast})
	n := b.Op("Neg", name+".neg_x2", []*graph.Value{x2})
	r := b.Op("Concat", name+".rot", []*graph.Value{n, x1}, graph.AttrI("axis", -1))
	c := b.Op("Mul", name+".cos", []*graph.Value{t, l.cos})
	s := b.Op("Mul", name+".sin", []*graph.Value{r, l.sin})
	return b.Op("Add", name+".rope", []*graph.Value{c, s})
}

// mlp is down(silu(gate(x)) · up(x)), SiLU as x·sigmoid(x).
func (l *llama) mlp(prefix string, x *graph.Value, wg, wu, wd linear) *graph.Value {
	g := l.g
	mm := func(name string, in *graph.Value, w linear) *graph.Value { return l.matmul(prefix+"."+name, in, w) }
	b := &graph.Builder{G: g, Prefix: prefix}
	gt := mm("gate_proj", x, wg)
	act := b.Op("Mul", prefix+".silu", []*graph.Value{gt, b.Op("Sigmoid", prefix+".sigmoid", []*graph.Value{gt})})
	act = b.Op("Mul", prefix+".gated", []*graph.Value{act, mm("up_proj", x, wu)})
	return mm("down_proj", act, wd)
}
