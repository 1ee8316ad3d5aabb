package testmodels

// A tiny Llama in the form onnxruntime-genai's model builder writes, and
// its standard-ops twin with the same weights.
//
// The genai form (GenaiLlama): inputs input_ids [batch_size,
// sequence_length], attention_mask [batch_size, total_sequence_length]
// and past_key_values.N.key/value [batch_size, kv_heads,
// past_sequence_length, head_size]; outputs logits and present.N.key/value;
// the embedding's norm as SimplifiedLayerNormalization, every later
// residual add + norm as com.microsoft SkipSimplifiedLayerNormalization;
// attention as com.microsoft GroupQueryAttention with rotary fused in
// (do_rotary, cos/sin caches) and grouped KV heads, seqlens_k and
// total_sequence_length derived in the graph from attention_mask; q/k/v as
// three MatMuls or one packed qkv_proj; MLP gate/up/down with SiLU as
// Sigmoid·x; weights MatMul (float32) or MatMulNBits (int4, block 32);
// with QuantEmbed the token embedding is com.microsoft
// GatherBlockQuantized over the int4 lm_head's weight, as the builder
// ties them (shared_embeddings with int4).
// With FP16, the builder's fp16 form (io_dtype float16, what it writes for
// CUDA): weights, norm scales, cos/sin caches, MatMulNBits scales, the KV
// cache and the logits are all float16 (the builder casts logits to
// float32 only for bf16 models).
//
// The twin (GenaiLlamaStandard) computes the same function with standard
// ops as torch.onnx writes a Llama (RMSNorm as Pow/ReduceMean/Sqrt, the
// rotary as Slice/Concat, attention as MatMul/Softmax with a causal and
// padding mask), no KV cache, and reads the same weights (the int4 one
// the same MatMulNBits, loracc's one stated exception to standard ops;
// with QuantEmbed its embedding is a float Gather of the same table,
// dequantized).

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/quant"
)

// GenaiOptions size the tiny Llama.
type GenaiOptions struct {
	Vocab, Hidden, Layers, Heads, KVHeads, Intermediate, MaxLen int64
	// Packed writes one qkv_proj MatMul instead of q/k/v_proj (the genai
	// form only; the twin always has three, on the same weights).
	Packed bool
	// Int4 stores every projection as MatMulNBits (block 32).
	Int4 bool
	// FP16 writes both forms in float16: every float weight, cache, KV
	// input/output and the logits; the values are the float32 ones
	// rounded, so the two forms still share their weights exactly.
	FP16 bool
	// QuantEmbed (with Int4) ties the token embedding to the lm_head as
	// the builder's shared_embeddings does for int4 models: the lm_head's
	// MatMulNBits weight [V, blocks, 16] (asymmetric, named as the
	// builder's k_quant names it: _Q4G32, _scale [V, blocks], _zp
	// [V, ⌈blocks/2⌉]) Reshaped to [V, Hidden/2] and looked up with
	// com.microsoft GatherBlockQuantized (bits 4, block 32, quantize_axis
	// 1). The twin gathers the same table dequantized, in float32.
	QuantEmbed bool
}

// dtype is the models' float type.
func (o GenaiOptions) dtype() graph.DataType {
	if o.FP16 {
		return graph.Float16
	}
	return graph.Float
}

// TinyGenai are the sizes of the committed-generator tests: 2 layers,
// 4 query heads over 2 KV heads of 16, MLP 96, vocabulary 96.
func TinyGenai() GenaiOptions {
	return GenaiOptions{Vocab: 96, Hidden: 64, Layers: 2, Heads: 4, KVHeads: 2, Intermediate: 96, MaxLen: 128}
}

func (o GenaiOptions) head() int64 { return o.Hidden / o.Heads }

func (o GenaiOptions) check() error {
	switch {
	case o.Heads <= 0 || o.KVHeads <= 0 || o.Heads%o.KVHeads != 0 || o.Hidden%o.Heads != 0:
		return fmt.Errorf("testmodels: heads %d, kv heads %d, hidden %d do not divide", o.Heads, o.KVHeads, o.Hidden)
	case o.head()%16 != 0:
		return fmt.Errorf("testmodels: head size %d: ORT's GroupQueryAttention with rotary wants a multiple of 16", o.head())
	case o.Int4 && (o.Hidden%32 != 0 || o.Intermediate%32 != 0):
		return fmt.Errorf("testmodels: int4 needs hidden and intermediate sizes that are multiples of 32")
	case o.QuantEmbed && !o.Int4:
		return fmt.Errorf("testmodels: a quantized embedding is tied to the int4 lm_head: set Int4")
	}
	return nil
}

// RotaryCaches are the cos and sin caches [maxLen, half] of a rotary
// embedding over 2·half dims (base 10000), as the model builder stores
// them for GroupQueryAttention and RotaryEmbedding.
func RotaryCaches(maxLen, half int64) (cos, sin []float32) {
	cos, sin = make([]float32, maxLen*half), make([]float32, maxLen*half)
	for p := range maxLen {
		for i := range half {
			theta := float64(p) * math.Pow(10000, -float64(2*i)/float64(2*half))
			cos[p*half+i], sin[p*half+i] = float32(math.Cos(theta)), float32(math.Sin(theta))
		}
	}
	return cos, sin
}

// GenaiConfig is the genai_config.json of a folder holding the genai
// form as model.onnx: the fields onnxruntime-genai reads for a decoder.
func GenaiConfig(o GenaiOptions) ([]byte, error) {
	cfg := map[string]any{
		"model": map[string]any{
			"type": "llama", "vocab_size": o.Vocab, "context_length": o.MaxLen,
			"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
			"decoder": map[string]any{
				"filename": "model.onnx", "hidden_size": o.Hidden, "head_size": o.head(),
				"num_attention_heads": o.Heads, "num_key_value_heads": o.KVHeads, "num_hidden_layers": o.Layers,
				"inputs": map[string]any{
					"input_ids": "input_ids", "attention_mask": "attention_mask",
					"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value",
				},
				"outputs": map[string]any{
					"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value",
				},
				"session_options": map[string]any{"provider_options": []any{}},
			},
		},
		"search": map[string]any{"max_length": o.MaxLen, "do_sample": false, "num_beams": 1},
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// llamaNet holds what both forms build from: the options, the builders
// and the shared weights and rotary caches.
type llamaNet struct {
	o        GenaiOptions
	m        *graph.Model
	b, ms    *graph.Builder // default domain; com.microsoft
	c        consts
	cos, sin *graph.Value // [MaxLen, head/2]
	// standard is set while building the twin; head is the lm_head's
	// MatMulNBits weight once made (the tied embedding reads it first).
	standard bool
	head     *nbitsWeight
}

// nbitsWeight are a MatMulNBits weight's constants; zp nil: the default.
type nbitsWeight struct {
	q, scales, zp *graph.Value
}

func newLlamaNet(name string, o GenaiOptions) (*llamaNet, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	m := newModel(name)
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	n := &llamaNet{o: o, m: m, b: &graph.Builder{G: m.Graph, Prefix: "model"}, ms: &graph.Builder{G: m.Graph, Prefix: "model", Domain: "com.microsoft"}}
	n.c = consts{b: n.b}
	half := o.head() / 2
	cos, sin := RotaryCaches(o.MaxLen, half)
	n.cos = n.c.add(graph.NewFloatTensor("cos_cache", o.dtype(), []int64{o.MaxLen, half}, cos))
	n.sin = n.c.add(graph.NewFloatTensor("sin_cache", o.dtype(), []int64{o.MaxLen, half}, sin))
	return n, n.c.err
}

func (n *llamaNet) op(op, out string, ins ...*graph.Value) *graph.Value {
	return n.b.Op(op, out, ins)
}

func (n *llamaNet) ints(name string, xs ...int64) *graph.Value { return n.b.Int64s(name, xs) }

// norm weights are near 1, like trained RMSNorm scales.
func (n *llamaNet) normWeight(name string) *graph.Value {
	return n.c.add(uniform(name, n.o.dtype(), []int64{n.o.Hidden}, 0.8, 1.2))
}

// proj is x·W for W [in, out], named as the onnxruntime-genai builder
// names it: name+".MatMul.weight" (MatMulNBits with name+".MatMul.weight_Q4"
// and ".MatMul.weight_scales" in int4 models).
func (n *llamaNet) proj(name string, x *graph.Value, in, out int64) *graph.Value {
	ts, err := n.projTensors(name, in, out)
	return n.projOp(name, x, in, out, ts, err)
}

// packedProj is the builder's packed projection (qkv_proj): one x·W whose
// W holds, column after column, the weights proj would make for each of
// names, so the packed model computes what the unpacked one does.
func (n *llamaNet) packedProj(name string, parts []string, x *graph.Value, in int64, outs []int64) *graph.Value {
	var total int64
	var pieces [][]*graph.Tensor
	for i, p := range parts {
		ts, err := n.projTensors(p, in, outs[i])
		if err != nil {
			return n.projOp(name, x, in, 0, nil, err)
		}
		pieces = append(pieces, ts)
		total += outs[i]
	}
	joined := make([]*graph.Tensor, len(pieces[0]))
	for k := range joined {
		first := pieces[0][k]
		var raw []byte
		if n.o.Int4 {
			// MatMulNBits stores W by output column: the parts' rows follow
			// each other.
			for _, ts := range pieces {
				b, _ := ts[k].Bytes()
				raw = append(raw, b...)
			}
		} else {
			// W [in, out]: each row is the parts' rows side by side.
			es := first.DType.ByteSize(1)
			for r := range in {
				for i, ts := range pieces {
					b, _ := ts[k].Bytes()
					raw = append(raw, b[r*outs[i]*es:(r+1)*outs[i]*es]...)
				}
			}
		}
		dims := append([]int64(nil), first.Dims...)
		if n.o.Int4 {
			dims[0] = dims[0] / outs[0] * total
		} else {
			dims[1] = total
		}
		joined[k] = graph.NewTensor(strings.Replace(first.Name, parts[0], name, 1), first.DType, dims, raw)
	}
	return n.projOp(name, x, in, total, joined, nil)
}

// projTensors makes the weight constants of proj: W [in, out], or the
// MatMulNBits data and scales — symmetric with 1-D scales, as ONNX
// Runtime's default quantizer writes them, or, for a tied lm_head,
// asymmetric with [out, blocks] scales and packed zero points (the
// builder's k_quant names), the layout GatherBlockQuantized also reads.
func (n *llamaNet) projTensors(name string, in, out int64) ([]*graph.Tensor, error) {
	if !n.o.Int4 {
		// Seeded by name+".weight", so the values do not depend on the
		// builder's naming.
		t, err := uniform(name+".weight", n.o.dtype(), []int64{in, out}, -0.2, 0.2)
		if t != nil {
			t.Name = name + ".MatMul.weight"
		}
		return []*graph.Tensor{t}, err
	}
	blocks := in / nbitsBlock
	r := newRNG(name + ".weight_Q4")
	packed := make([]byte, out*blocks*nbitsBlock/2)
	for i := range packed {
		packed[i] = byte(r.next())
	}
	scales := make([]float32, out*blocks)
	for i := range scales {
		scales[i] = r.between(0.005, 0.02)
	}
	if !(name == "lm_head" && n.o.QuantEmbed) {
		st, err := graph.NewFloatTensor(name+".MatMul.weight_scales", n.o.dtype(), []int64{out * blocks}, scales)
		return []*graph.Tensor{graph.NewTensor(name+".MatMul.weight_Q4", graph.Uint8, []int64{out, blocks, nbitsBlock / 2}, packed), st}, err
	}
	zw := (blocks + 1) / 2
	zp := make([]byte, out*zw)
	for i := range zp {
		zp[i] = byte(6+r.next()%5) | byte(6+r.next()%5)<<4
	}
	st, err := graph.NewFloatTensor(name+".MatMul.weight_scale", n.o.dtype(), []int64{out, blocks}, scales)
	return []*graph.Tensor{
		graph.NewTensor(name+".MatMul.weight_Q4G32", graph.Uint8, []int64{out, blocks, nbitsBlock / 2}, packed), st,
		graph.NewTensor(name+".MatMul.weight_zp", graph.Uint8, []int64{out, zw}, zp),
	}, err
}

const nbitsBlock = 32

// projOp reads the constants projTensors made.
func (n *llamaNet) projOp(name string, x *graph.Value, in, out int64, ts []*graph.Tensor, err error) *graph.Value {
	if err != nil {
		return n.c.add(nil, err)
	}
	if !n.o.Int4 {
		return n.op("MatMul", name+".out", x, n.c.add(ts[0], nil))
	}
	w := n.nbitsValues(name, ts)
	ins := []*graph.Value{x, w.q, w.scales}
	if w.zp != nil {
		ins = append(ins, w.zp)
	}
	return n.ms.Op("MatMulNBits", name+".out", ins,
		graph.AttrI("K", in), graph.AttrI("N", out), graph.AttrI("bits", 4), graph.AttrI("block_size", nbitsBlock))
}

// nbits is the int4 weight of projection name as graph values.
func (n *llamaNet) nbits(name string, in, out int64) *nbitsWeight {
	ts, err := n.projTensors(name, in, out)
	if err != nil {
		n.c.add(nil, err)
		return &nbitsWeight{}
	}
	return n.nbitsValues(name, ts)
}

// nbitsValues adds MatMulNBits constants to the graph, once for a tied
// lm_head, which the embedding reads first.
func (n *llamaNet) nbitsValues(name string, ts []*graph.Tensor) *nbitsWeight {
	tied := name == "lm_head" && n.o.QuantEmbed
	if tied && n.head != nil {
		return n.head
	}
	w := &nbitsWeight{q: n.c.add(ts[0], nil), scales: n.c.add(ts[1], nil)}
	if len(ts) > 2 {
		w.zp = n.c.add(ts[2], nil)
	}
	if tied {
		n.head = w
	}
	return w
}

// mlp is down(silu(gate(x))·up(x)).
func (n *llamaNet) mlp(p string, x *graph.Value) *graph.Value {
	o := n.o
	gate := n.proj(p+".mlp.gate_proj", x, o.Hidden, o.Intermediate)
	silu := n.op("Mul", p+".mlp.act", gate, n.op("Sigmoid", p+".mlp.sigmoid", gate))
	up := n.proj(p+".mlp.up_proj", x, o.Hidden, o.Intermediate)
	return n.proj(p+".mlp.down_proj", n.op("Mul", p+".mlp.prod", silu, up), o.Intermediate, o.Hidden)
}

// embed is the token embedding: a float Gather, or with QuantEmbed the
// builder's tied GatherBlockQuantized (the twin: a Gather of that table
// dequantized).
func (n *llamaNet) embed(ids *graph.Value) *graph.Value {
	o := n.o
	if !o.QuantEmbed {
		w := n.c.add(uniform("model.embed_tokens.weight", o.dtype(), []int64{o.Vocab, o.Hidden}, -1, 1))
		return n.b.Op("Gather", "model.embed_tokens.out", []*graph.Value{w, ids}, graph.AttrI("axis", 0))
	}
	h := n.nbits("lm_head", o.Hidden, o.Vocab)
	if n.c.err != nil {
		return nil
	}
	if n.standard {
		w := n.c.add(dequantizedTable(h, o.Hidden, o.Vocab, o.dtype()))
		return n.b.Op("Gather", "model.embed_tokens.out", []*graph.Value{w, ids}, graph.AttrI("axis", 0))
	}
	table := n.op("Reshape", "model.embed_tokens.table", h.q, n.ints("model.embed_tokens.shape", o.Vocab, o.Hidden/2))
	return n.ms.Op("GatherBlockQuantized", "model.embed_tokens.out", []*graph.Value{table, ids, h.scales, h.zp},
		graph.AttrI("bits", 4), graph.AttrI("block_size", nbitsBlock), graph.AttrI("gather_axis", 0), graph.AttrI("quantize_axis", 1))
}

// dequantizedTable is the [vocab, hidden] table of a tied int4
// lm_head (its MatMulNBits weight holds Wᵀ: a row per token).
func dequantizedTable(h *nbitsWeight, hidden, vocab int64, dt graph.DataType) (*graph.Tensor, error) {
	q := &quant.NBits{K: hidden, N: vocab, Bits: 4, BlockSize: nbitsBlock, B: h.q.Const, Scales: h.scales.Const, ZeroPoints: h.zp.Const}
	w, err := q.Dequantize() // [K, N]
	if err != nil {
		return nil, err
	}
	e := make([]float32, vocab*hidden)
	for v := range vocab {
		for k := range hidden {
			e[v*hidden+k] = float32(w[k*vocab+v])
		}
	}
	return graph.NewFloatTensor("model.embed_tokens.weight", dt, []int64{vocab, hidden}, e)
}

func (n *llamaNet) finish(x *graph.Value, seqDim graph.Dim) (*graph.Model, error) {
	logits := n.proj("lm_head", x, n.o.Hidden, n.o.Vocab)
	if err := logits.Rename("logits"); err != nil {
		return nil, err
	}
	logits.Type = tensorType(n.o.dtype(), graph.Dim{Param: "batch_size"}, seqDim, fixed(n.o.Vocab))
	n.m.Graph.Outputs = append([]*graph.Value{logits}, n.m.Graph.Outputs...)
	return n.m, n.c.err
}

var (
	batchSize = graph.Dim{Param: "batch_size"}
	seqLen    = graph.Dim{Param: "sequence_length"}
	totalLen  = graph.Dim{Param: "total_sequence_length"}
	pastLen   = graph.Dim{Param: "past_sequence_length"}
)

// GenaiLlama is the genai form.
func GenaiLlama(o GenaiOptions) (*graph.Model, error) {
	n, err := newLlamaNet("genai_llama", o)
	if err != nil {
		return nil, err
	}
	g := n.m.Graph
	head := o.head()
	ids := g.AddInput("input_ids", tensorType(graph.Int64, batchSize, seqLen))
	mask := g.AddInput("attention_mask", tensorType(graph.Int64, batchSize, totalLen))
	// seqlens_k = Σ mask − 1 and total_sequence_length = mask's width, int32.
	sum := n.b.Op("ReduceSum", "attn_mask_reformat/sum", []*graph.Value{mask, n.ints("attn_mask_reformat/axes", 1)}, graph.AttrI("keepdims", 0))
	seqlens := n.b.Op("Cast", "attn_mask_reformat/seqlens_k", []*graph.Value{n.op("Sub", "attn_mask_reformat/minus1", sum, n.ints("attn_mask_reformat/one", 1))}, graph.AttrI("to", int64(graph.Int32)))
	width := n.b.Op("Gather", "attn_mask_reformat/width", []*graph.Value{n.op("Shape", "attn_mask_reformat/shape", mask), n.b.Int64s("attn_mask_reformat/idx", []int64{1})}, graph.AttrI("axis", 0))
	total := n.b.Op("Cast", "attn_mask_reformat/total", []*graph.Value{n.b.Op("Squeeze", "attn_mask_reformat/scalar", []*graph.Value{width, n.ints("attn_mask_reformat/axis0", 0)})}, graph.AttrI("to", int64(graph.Int32)))
	x := n.embed(ids)
	var resid *graph.Value
	// SimplifiedLayerNormalization is an ONNX Runtime schema in the default domain.
	normed := n.b.Op("SimplifiedLayerNormalization", "model.layers.0.input_layernorm.out", []*graph.Value{x, n.normWeight("model.layers.0.input_layernorm.weight")}, graph.AttrF("epsilon", 1e-5), graph.AttrI("axis", -1))
	resid = x
	skipNorm := func(name string, y, skip *graph.Value, w *graph.Value) (*graph.Value, *graph.Value) {
		outs := n.ms.OpN("SkipSimplifiedLayerNormalization", []string{name + ".out", "", "", name + ".sum"}, []*graph.Value{y, skip, w}, graph.AttrF("epsilon", 1e-5))
		return outs[0], outs[3]
	}
	for l := range o.Layers {
		p := fmt.Sprintf("model.layers.%d", l)
		if l > 0 {
			normed, resid = skipNorm(p+".input_layernorm", x, resid, n.normWeight(p+".input_layernorm.weight"))
		}
		var q, k, v *graph.Value
		if o.Packed {
			q = n.packedProj(p+".attn.qkv_proj", []string{p + ".attn.q_proj", p + ".attn.k_proj", p + ".attn.v_proj"}, normed, o.Hidden,
				[]int64{o.Heads * head, o.KVHeads * head, o.KVHeads * head})
		} else {
			q = n.proj(p+".attn.q_proj", normed, o.Hidden, o.Heads*head)
			k = n.proj(p+".attn.k_proj", normed, o.Hidden, o.KVHeads*head)
			v = n.proj(p+".attn.v_proj", normed, o.Hidden, o.KVHeads*head)
		}
		cache := tensorType(o.dtype(), batchSize, fixed(o.KVHeads), pastLen, fixed(head))
		pk := g.AddInput(fmt.Sprintf("past_key_values.%d.key", l), cache)
		pv := g.AddInput(fmt.Sprintf("past_key_values.%d.value", l), cache)
		outs := n.ms.OpN("GroupQueryAttention", []string{p + ".attn.out", fmt.Sprintf("present.%d.key", l), fmt.Sprintf("present.%d.value", l)},
			[]*graph.Value{q, k, v, pk, pv, seqlens, total, n.cos, n.sin},
			graph.AttrI("num_heads", o.Heads), graph.AttrI("kv_num_heads", o.KVHeads), graph.AttrI("do_rotary", 1), graph.AttrI("rotary_interleaved", 0), graph.AttrI("local_window_size", -1))
		for _, pr := range outs[1:] {
			pr.Type = tensorType(o.dtype(), batchSize, fixed(o.KVHeads), totalLen, fixed(head))
			g.AddOutput(pr)
		}
		attn := n.proj(p+".attn.o_proj", outs[0], o.Heads*head, o.Hidden)
		normed, resid = skipNorm(p+".post_attention_layernorm", attn, resid, n.normWeight(p+".post_attention_layernorm.weight"))
		x = n.mlp(p, normed)
	}
	final, _ := skipNorm("model.norm", x, resid, n.normWeight("model.norm.weight"))
	return n.finish(final, seqLen)
}

// GenaiLlamaStandard is the standard-ops twin of GenaiLlama(o) (without a
// KV cache; o.Packed is ignored: three projections, whose weights the
// packed form's qkv_proj holds side by side).
func GenaiLlamaStandard(o GenaiOptions) (*graph.Model, error) {
	n, err := newLlamaNet("genai_llama_standard", o)
	if err != nil {
		return nil, err
	}
	n.standard = true
	g := n.m.Graph
	head := o.head()
	ids := g.AddInput("input_ids", tensorType(graph.Int64, batchSize, seqLen))
	mask := g.AddInput("attention_mask", tensorType(graph.Int64, batchSize, seqLen))
	rms := func(name string, x *graph.Value) *graph.Value {
		sq := n.op("Pow", name+".sq", x, n.c.add(graph.NewFloatTensor(name+".two", o.dtype(), nil, []float32{2})))
		mean := n.b.Op("ReduceMean", name+".mean", []*graph.Value{sq}, graph.AttrIs("axes", -1), graph.AttrI("keepdims", 1))
		eps := n.c.add(graph.NewFloatTensor(name+".eps", o.dtype(), nil, []float32{1e-5}))
		inv := n.op("Reciprocal", name+".inv", n.op("Sqrt", name+".rms", n.op("Add", name+".var", mean, eps)))
		return n.op("Mul", name+".out", n.normWeight(name+".weight"), n.op("Mul", name+".scaled", x, inv))
	}
	// Positions 0..S−1, the causal and padding mask [B, 1, S, S] as 0/−max
	// (the type's most negative finite value, as torch.onnx writes it).
	closed := float32(-math.MaxFloat32)
	if o.FP16 {
		closed = -65504
	}
	shape := n.op("Shape", "mask/shape", ids)
	s := n.b.Op("Gather", "mask/seq", []*graph.Value{shape, n.b.Int64s("mask/one", []int64{1})}, graph.AttrI("axis", 0))
	sScalar := n.b.Op("Squeeze", "mask/seq0", []*graph.Value{s, n.ints("mask/axis0", 0)})
	zero, one := n.c.add(graph.NewTensor("mask/zero", graph.Int64, nil, make([]byte, 8)), nil), n.c.add(graph.NewTensor("mask/step", graph.Int64, nil, []byte{1, 0, 0, 0, 0, 0, 0, 0}), nil)
	pos := n.op("Range", "mask/pos", zero, sScalar, one)
	rows := n.b.Op("Unsqueeze", "mask/rows", []*graph.Value{pos, n.ints("mask/axis1", 1)})
	causal := n.op("LessOrEqual", "mask/causal", pos, rows) // [S, S]: key ≤ query
	keys := n.b.Op("Cast", "mask/keys", []*graph.Value{n.b.Op("Unsqueeze", "mask/keys4", []*graph.Value{mask, n.ints("mask/axes12", 1, 2)})}, graph.AttrI("to", int64(graph.Bool)))
	allowed := n.op("And", "mask/allowed", causal, keys) // [B, 1, S, S]
	bias := n.op("Where", "mask/bias", allowed, n.c.add(graph.NewFloatTensor("mask/open", o.dtype(), nil, []float32{0})), n.c.add(graph.NewFloatTensor("mask/closed", o.dtype(), nil, []float32{closed})))
	cos := n.b.Op("Gather", "rope/cos", []*graph.Value{n.cos, pos}, graph.AttrI("axis", 0)) // [S, head/2]
	sin := n.b.Op("Gather", "rope/sin", []*graph.Value{n.sin, pos}, graph.AttrI("axis", 0))
	cos2, sin2 := n.b.Op("Concat", "rope/cos2", []*graph.Value{cos, cos}, graph.AttrI("axis", -1)), n.b.Op("Concat", "rope/sin2", []*graph.Value{sin, sin}, graph.AttrI("axis", -1))
	bnsh := func(name string, x *graph.Value, heads int64) *graph.Value {
		r := n.op("Reshape", name+".heads", x, n.ints(name+".shape", 0, 0, heads, head))
		return n.b.Op("Transpose", name+".bnsh", []*graph.Value{r}, graph.AttrIs("perm", 0, 2, 1, 3))
	}
	rope := func(name string, x *graph.Value) *graph.Value { // x·cos + rotate_half(x)·sin
		h := head / 2
		x1 := n.op("Slice", name+".x1", x, n.ints(name+".s0", 0), n.ints(name+".s1", h), n.ints(name+".ax", -1))
		x2 := n.op("Slice", name+".x2", x, n.ints(name+".s2", h), n.ints(name+".s3", head), n.ints(name+".ax2", -1))
		rot := n.b.Op("Concat", name+".rot", []*graph.Value{n.op("Neg", name+".neg", x2), x1}, graph.AttrI("axis", -1))
		return n.op("Add", name+".rope", n.op("Mul", name+".c", x, cos2), n.op("Mul", name+".s", rot, sin2))
	}
	repeat := func(name string, x *graph.Value) *graph.Value {
		if o.Heads == o.KVHeads {
			return x
		}
		u := n.b.Op("Unsqueeze", name+".u", []*graph.Value{x, n.ints(name+".ax", 2)})
		e := n.op("Expand", name+".e", u, n.ints(name+".rep", 1, 1, o.Heads/o.KVHeads, 1, 1))
		return n.op("Reshape", name+".r", e, n.ints(name+".shape", 0, o.Heads, -1, head))
	}
	scale := n.c.add(graph.NewFloatTensor("attn.scale", o.dtype(), nil, []float32{float32(1 / math.Sqrt(float64(head)))}))
	x := n.embed(ids)
	for l := range o.Layers {
		p := fmt.Sprintf("model.layers.%d", l)
		h := rms(p+".input_layernorm", x)
		q := rope(p+".q", bnsh(p+".q", n.proj(p+".attn.q_proj", h, o.Hidden, o.Heads*head), o.Heads))
		k := repeat(p+".k", rope(p+".k", bnsh(p+".k", n.proj(p+".attn.k_proj", h, o.Hidden, o.KVHeads*head), o.KVHeads)))
		v := repeat(p+".v", bnsh(p+".v", n.proj(p+".attn.v_proj", h, o.Hidden, o.KVHeads*head), o.KVHeads))
		kt := n.b.Op("Transpose", p+".kt", []*graph.Value{k}, graph.AttrIs("perm", 0, 1, 3, 2))
		scores := n.op("Add", p+".scores", n.op("MatMul", p+".qk", n.op("Mul", p+".qs", q, scale), kt), bias)
		probs := n.b.Op("Softmax", p+".probs", []*graph.Value{scores}, graph.AttrI("axis", -1))
		ctx := n.b.Op("Transpose", p+".ctx", []*graph.Value{n.op("MatMul", p+".pv", probs, v)}, graph.AttrIs("perm", 0, 2, 1, 3))
		merged := n.op("Reshape", p+".merged", ctx, n.ints(p+".mshape", 0, 0, o.Heads*head))
		x = n.op("Add", p+".resid1", x, n.proj(p+".attn.o_proj", merged, o.Heads*head, o.Hidden))
		x = n.op("Add", p+".resid2", x, n.mlp(p, rms(p+".post_attention_layernorm", x)))
	}
	return n.finish(rms("model.norm", x), seqLen)
}
