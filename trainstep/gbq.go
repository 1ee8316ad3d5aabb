package trainstep

// Part of pass "canonicalize": com.microsoft GatherBlockQuantized, the
// quantized token embedding of onnxruntime-genai's int4 models, replaced
// by standard ops computing the same values, like the attention ops
// (contrib.go). The table is frozen (LoRA trains adapters only) and the
// indices are token ids, so nothing upstream of the lookup is
// differentiated: autodiff walks only what leads from the parameters.
//
// Where the builder writes it: with shared_embeddings (tied embeddings)
// and int4 weights, the lm_head's MatMulNBits weight [V, blocks, blob]
// is Reshaped to [V, H·bits/8] uint8 and looked up with the lm_head's
// scales [V, blocks] and packed zero points (bits 4, or 8 when the
// lm_head is int8); with Gather among the quantizer's op types and no
// tying, ONNX Runtime's quantizer writes the table as int4/uint4
// [V, H] with scales [V, blocks] and int4/uint4 zero points of the
// scales' shape. Both have gather_axis 0 and quantize_axis last.
//
// Semantics (ORT's ContribOperators documentation and CPU kernel, facts
// only): out[i..., k] = (q[i, k] − zp[i, k / block]) · scale[i, k /
// block], computed in float32 and stored in the scales' type (float32 or
// float16); rows of data are gathered along gather_axis; uint8 data packs
// 8/bits codes per byte, lowest bits first (so the output's last dim is
// 8/bits times data's), its zero points packed the same way per row of
// scales, default 2^(bits−1) (8 for 4 bits); int4/uint4 data holds one
// code per element, packed two per byte over the whole tensor, its zero
// points int4/uint4 of the scales' shape, default 0; int4 codes are
// signed (−8..7); the last block may be partial (blocks = ⌈D/block⌉);
// block_size is a power of two ≥ 16; negative indices count from the end.
//
// The decomposition: Gather the rows of the (packed uint8) table, of the
// scales and of the zero points; unpack the codes in int32 with Div, Mul
// and Sub by 2^bits (quant.Unpacker, shared with the MatMulNBits
// backward); map each column k to its block k / block with a Gather of a
// constant index vector (partial last blocks need no special case); q − zp
// in int32, times the scale in float32, as the kernel computes it; Cast to
// float16 when the scales are. Every step is exact, so the values equal the kernel's bit for bit
// (TestGatherBlockQuantizedMatchesORT). int4/uint4 tables are read as the
// uint8 bytes they are (the same lazy external data, no copy), their zero
// points repacked per row at compile time (V × blocks codes, small). A
// tied table read through a Reshape of the MatMulNBits weight is gathered
// from the weight itself, so no reshaped copy of it is needed.
//
// Differences: an index out of range is an error here (ORT's Gather)
// where the contrib kernel writes zeros; token ids are in range.
//
// Not supported (one error naming node, op and attribute): gather_axis
// other than 0, quantize_axis other than the last, bits other than 4 or
// 8 (uint8) or 4 (int4/uint4), FP8/FP4 data, scales other than float32
// or float16, int4/uint4 tables or zero points that are not constants,
// int4/uint4 tables with an odd last dim, and shapes not known when the
// model is compiled.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/internal/quant"
)

// GatherBlockQuantized input slots.
const (
	gbqData = iota
	gbqIndices
	gbqScales
	gbqZeroPoints
)

// gbqTable is a GatherBlockQuantized table in the form the decomposition
// reads: packed uint8 rows.
type gbqTable struct {
	rows       *graph.Value // what to Gather rows from: [V, ...] uint8
	width      int64        // bytes per row of codes (data's last dim for uint8, half of it for int4)
	inner      []int64      // data's dims between the gathered and the quantized axis
	bits       int64
	signed     bool         // int4 codes (−8..7)
	zp         *graph.Value // packed uint8 zero points [V, ..., ⌈blocks·bits/8⌉], or nil
	defaultZP  int64
	dim        int64 // D, the output's last dim
	blocks     int64
	block      int64
	scaleDType graph.DataType
}

func decomposeGBQ(m *graph.Model, n *graph.Node) error {
	if v := m.OpsetVersion(""); v < 9 {
		return fmt.Errorf("the decomposition needs opset 9 (Where, Less on integers; the model has %d)", v)
	}
	inf := infer.New()
	b := opb.New(m, n.Name+"/decomposed", n.Name+"/decomposed", inf)
	t, err := gbqRead(b, inf, n)
	if err != nil {
		return err
	}
	idx := input(n, gbqIndices)
	// Rows: [M, width] packed codes, [M, blocks] scales, M = |indices|·Π inner.
	flat := func(x *graph.Value, w int64) *graph.Value { return b.Reshape(b.Gather(x, idx, 0), b.Ints(-1, w)) }
	blockOf := make([]int64, t.dim)
	for k := range blockOf {
		blockOf[k] = int64(k) / t.block
	}
	blockIdx := b.Ints(blockOf...)
	u := &quant.Unpacker{B: b, Bits: t.bits, Signed: t.signed}
	q := u.Codes(flat(t.rows, t.width), t.width) // [M, D] int32
	if t.zp != nil {
		zw := (t.blocks*t.bits + 7) / 8
		q = b.Sub(q, b.Gather(u.Codes(flat(t.zp, zw), zw), blockIdx, 1))
	} else if t.defaultZP != 0 {
		q = b.Sub(q, u.Int32(t.defaultZP))
	}
	scale := b.Gather(flat(input(n, gbqScales), t.blocks), blockIdx, 1) // [M, D]
	if t.scaleDType != graph.Float {
		scale = b.Cast(scale, graph.Float)
	}
	out := b.Mul(b.Cast(q, graph.Float), scale)
	if t.scaleDType != graph.Float {
		out = b.Cast(out, t.scaleDType)
	}
	out = b.Reshape(out, b.Concat(0, b.Shape(idx), b.Ints(append(append([]int64(nil), t.inner...), t.dim)...)))
	if err := b.Err(); err != nil {
		return err
	}
	return replaceOutputs(m.Graph, n, out)
}

// gbqRead checks n's attributes and shapes against what the decomposition
// supports and returns its table.
func gbqRead(b *opb.Builder, inf *infer.Inferer, n *graph.Node) (*gbqTable, error) {
	data, idx, scales, zp := input(n, gbqData), input(n, gbqIndices), input(n, gbqScales), input(n, gbqZeroPoints)
	if data == nil || idx == nil || scales == nil {
		return nil, fmt.Errorf("data, indices and scales are all required")
	}
	dims := inf.Info(data).Dims
	rank := len(dims)
	if inf.Rank(data) < 2 || rank != inf.Rank(data) {
		return nil, fmt.Errorf("data of rank %d: want a known rank of at least 2", inf.Rank(data))
	}
	if a, err := graph.NormAxis(n.AttrInt("gather_axis", 0), rank); err != nil || a != 0 {
		return nil, fmt.Errorf("attribute gather_axis=%d is not supported for training (only 0, the rows of an embedding)", n.AttrInt("gather_axis", 0))
	}
	if a, err := graph.NormAxis(n.AttrInt("quantize_axis", 1), rank); err != nil || a != int64(rank-1) {
		return nil, fmt.Errorf("attribute quantize_axis=%d is not supported for training (only the last axis, %d)", n.AttrInt("quantize_axis", 1), rank-1)
	}
	t := &gbqTable{bits: n.AttrInt("bits", 4), block: n.AttrInt("block_size", 128), scaleDType: inf.DType(scales)}
	if t.block < 16 || t.block&(t.block-1) != 0 {
		return nil, fmt.Errorf("attribute block_size=%d: want a power of 2, at least 16", t.block)
	}
	if t.scaleDType != graph.Float && t.scaleDType != graph.Float16 {
		return nil, fmt.Errorf("scales of type %s are not supported (float32 or float16)", t.scaleDType)
	}
	for i, d := range dims[1:] {
		if !d.Known() {
			return nil, fmt.Errorf("data's dim %d is not known when compiling", i+1)
		}
		if i < rank-2 {
			t.inner = append(t.inner, d.Value)
		}
	}
	last := dims[rank-1].Value
	dt := inf.DType(data)
	switch dt {
	case graph.Uint8:
		if t.bits != 4 && t.bits != 8 {
			return nil, fmt.Errorf("attribute bits=%d is not supported for training (uint8 data: 4 or 8)", t.bits)
		}
		t.rows, t.width, t.dim, t.defaultZP = gbqLookThrough(data, dims), last, last*8/t.bits, int64(1)<<(t.bits-1)
	case graph.Int4, graph.Uint4:
		if t.bits != 4 {
			return nil, fmt.Errorf("attribute bits=%d: %s data holds 4-bit codes", t.bits, dt)
		}
		if last%2 != 0 {
			return nil, fmt.Errorf("%s data with an odd last dim %d: its rows do not start on a byte", dt, last)
		}
		c := graph.ConstTensor(data)
		if c == nil {
			return nil, fmt.Errorf("%s data that is not a constant is not supported for training", dt)
		}
		asBytes, err := gbqAsBytes(c)
		if err != nil {
			return nil, err
		}
		t.rows, t.width, t.dim, t.signed = b.Const(asBytes), last/2, last, dt == graph.Int4
	default:
		return nil, fmt.Errorf("data of type %s is not supported for training (uint8, int4 or uint4)", dt)
	}
	t.blocks = (t.dim + t.block - 1) / t.block
	if err := gbqCheckShape("scales", inf.Info(scales), dims, t.blocks); err != nil {
		return nil, err
	}
	if zp == nil {
		return t, nil
	}
	if zd := inf.DType(zp); zd != dt {
		return nil, fmt.Errorf("zero_points of type %s with data of type %s", zd, dt)
	}
	if dt != graph.Uint8 {
		if err := gbqCheckShape("zero_points", inf.Info(zp), dims, t.blocks); err != nil {
			return nil, err
		}
		c := graph.ConstTensor(zp)
		if c == nil {
			return nil, fmt.Errorf("%s zero_points that are not a constant are not supported for training", dt)
		}
		packed, err := gbqRepack(c, t.blocks)
		if err != nil {
			return nil, err
		}
		t.zp = b.Const(packed)
		return t, nil
	}
	if err := gbqCheckShape("zero_points", inf.Info(zp), dims, (t.blocks*t.bits+7)/8); err != nil {
		return nil, err
	}
	t.zp = zp
	return t, nil
}

// gbqCheckShape: x (scales or zero points) has data's rank and dims, its
// last one last.
func gbqCheckShape(name string, x infer.Info, dims []graph.Dim, last int64) error {
	bad := len(x.Dims) != len(dims) || x.Dims[len(dims)-1].Value != last
	for i := 0; !bad && i < len(dims)-1; i++ {
		bad = x.Dims[i].Known() && dims[i].Known() && x.Dims[i].Value != dims[i].Value
	}
	if bad {
		return fmt.Errorf("%s of shape %v do not match data %v with %d blocks", name, x.Dims, dims, last)
	}
	return nil
}

// gbqLookThrough returns the constant a tied table is Reshaped from when
// the Reshape keeps the rows (the builder's MatMulNBits weight [V,
// blocks, blob] → [V, blocks·blob]), so the lookup reads the weight and
// no reshaped copy of it is needed; else data itself.
func gbqLookThrough(data *graph.Value, dims []graph.Dim) *graph.Value {
	p, _ := data.Producer()
	if p == nil || p.Op != "Reshape" || p.Domain != "" || !dims[0].Known() {
		return data
	}
	src := p.Input(0)
	c := graph.ConstTensor(src)
	if c == nil || c.DType != graph.Uint8 || len(c.Dims) < 2 || c.Dims[0] != dims[0].Value {
		return data
	}
	return src
}

// gbqAsBytes is an int4/uint4 table [V, ..., D] (D even) as the uint8
// tensor [V, ..., D/2] its bytes are (graph.Tensor.Reinterpreted: the
// same external data, read when used, or the same bytes in memory).
func gbqAsBytes(c *graph.Tensor) (*graph.Tensor, error) {
	dims := append([]int64(nil), c.Dims...)
	dims[len(dims)-1] /= 2
	return c.Reinterpreted(c.Name+".bytes", graph.Uint8, dims)
}

// gbqRepack packs int4/uint4 zero points, two per byte over the whole
// tensor, per row of blocks instead ([..., ⌈blocks/2⌉], the uint8 form's
// layout), keeping each 4-bit code as it is.
func gbqRepack(c *graph.Tensor, blocks int64) (*graph.Tensor, error) {
	raw, err := c.Bytes()
	if err != nil {
		return nil, err
	}
	n, err := c.NumElements()
	if err != nil {
		return nil, err
	}
	if int64(len(raw)) != (n+1)/2 {
		return nil, fmt.Errorf("zero_points %q: %d bytes for %d codes", c.Name, len(raw), n)
	}
	rows, w := n/blocks, (blocks+1)/2
	out := make([]byte, rows*w)
	for j := range n {
		v := raw[j/2] >> (4 * (j % 2)) & 0x0F
		r, k := j/blocks, j%blocks
		out[r*w+k/2] |= v << (4 * (k % 2))
	}
	dims := append([]int64(nil), c.Dims...)
	dims[len(dims)-1] = w
	return graph.NewTensor(c.Name+".rows", graph.Uint8, dims, out), nil
}
