package quant

// Run-time dequantization in standard ops: the graphs the training
// compiler writes unpack packed codes while the step runs instead of
// carrying a float copy of a quantized weight. Two users: the
// decomposition of com.microsoft GatherBlockQuantized (trainstep/gbq.go)
// and the backward product of MatMulNBits (autodiff/nbits.go).
//
// The ops are those of every opset from 9 that ONNX Runtime runs on the
// CPU and on CUDA: Cast, integer Div, Mul and Sub in int32 (CUDA's
// arithmetic kernels take int32 but not uint8; BitwiseAnd would need
// opset 18), Concat and Reshape. Every step is exact, so the values equal
// the contrib kernels' bit for bit when the scales are float32: codes and
// zero points are small integers, their difference is exact in int32 and
// in float32, and one float32 product by the scale rounds once.

import (
	"encoding/binary"
	"math"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/opb"
)

// Unpacker builds the unpacking of packed codes with one builder, its
// int32 constants made once.
type Unpacker struct {
	B      *opb.Builder
	Bits   int64 // bits per code: 2, 4 or 8 (8/Bits codes per byte)
	Signed bool  // int4 codes: 8..15 are −8..−1
	k      map[int64]*graph.Value
}

// Int32 is a rank-0 int32 constant.
func (u *Unpacker) Int32(x int64) *graph.Value {
	if u.k == nil {
		u.k = map[int64]*graph.Value{}
	}
	if u.k[x] == nil {
		u.k[x] = u.B.Const(graph.NewTensor("unpack.int32", graph.Int32, nil, binary.LittleEndian.AppendUint32(nil, uint32(int32(x)))))
	}
	return u.k[x]
}

// Codes expands packed bytes [M, w] (uint8) into their codes [M, w·8/Bits]
// as int32 values, lowest bits first: with base 2^Bits and f₀ = x,
// f_{j+1} = f_j / base (integer division), code j is f_j − base·f_{j+1}
// (the last one f_j itself).
func (u *Unpacker) Codes(x *graph.Value, w int64) *graph.Value {
	b := u.B
	per, base := 8/u.Bits, int64(1)<<u.Bits
	f := b.Cast(x, graph.Int32)
	out := f
	if per > 1 {
		codes := make([]*graph.Value, per)
		for j := range per {
			if j == per-1 {
				codes[j] = b.Unsqueeze(f, -1)
				break
			}
			next := b.Div(f, u.Int32(base))
			codes[j] = b.Unsqueeze(b.Sub(f, b.Mul(next, u.Int32(base))), -1)
			f = next
		}
		out = b.Reshape(b.Concat(-1, codes...), b.Ints(-1, w*per))
	}
	if u.Signed {
		out = b.Where(b.Less(out, u.Int32(8)), out, b.Sub(out, u.Int32(16)))
	}
	return out
}

// RunTimeBits reports whether DequantizeOp unpacks codes of this width:
// a whole number of codes per byte, as ONNX Runtime's MatMulNBits takes.
func RunTimeBits(bits int64) bool { return bits == 2 || bits == 4 || bits == 8 }

// DequantizeOp builds W [N, K] of MatMulNBits node n (W as the node
// multiplies by its transpose) in the scales' type, computed while the
// step runs from the node's own packed weight, scales and zero points.
//
// The constants are read through Where(after, x, x), which is x: after is
// a run-time boolean, so nothing here is a constant expression. ONNX
// Runtime would otherwise fold the whole unpacking into a float
// initializer when the session starts (the float copy this exists to
// avoid), and it schedules the nodes only once after is computed, so a
// backward product's dequantization runs next to its use and its [N, K]
// float lives only until the product is done. Reading the constants
// costs one copy of the packed bytes per use.
//
// With opset 21 or later and 4-bit codes it is one blocked
// DequantizeLinear of the packed weight read as uint4 [N, blocks·block]
// (graph.Tensor.Reinterpreted: the bytes are the same, low nibble first)
// with the scales [N, blocks] and the zero points repacked as uint4 (8
// where the node has none): one kernel instead of the unpacking's dozen,
// at the cost of a second initializer over the same bytes, which ONNX
// Runtime loads apart from the forward's.
func (q *NBits) DequantizeOp(b *opb.Builder, n *graph.Node, after *graph.Value) *graph.Value {
	late := func(x *graph.Value) *graph.Value { return b.Where(after, x, x) }
	if b.Opset >= 21 && q.Bits == 4 {
		return q.dequantizeLinear(b, n, late)
	}
	blocks, bs := q.blocks(), q.BlockSize
	u := &Unpacker{B: b, Bits: q.Bits}
	blob := bs * q.Bits / 8
	rows := b.Reshape(late(n.Input(1)), b.Ints(q.N, blocks*blob))
	codes := b.Reshape(u.Codes(rows, blocks*blob), b.Ints(q.N, blocks, bs)) // [N, blocks, bs]
	if q.ZeroPoints != nil {
		zw := (blocks*q.Bits + 7) / 8
		zp := u.Codes(b.Reshape(late(n.Input(3)), b.Ints(q.N, zw)), zw) // [N, zw·8/bits]
		if zw*8/q.Bits != blocks {
			zp = b.Slice(zp, 0, blocks, 1)
		}
		codes = b.Sub(codes, b.Unsqueeze(zp, -1))
	} else {
		codes = b.Sub(codes, u.Int32(1<<(q.Bits-1)))
	}
	scale := b.Reshape(late(n.Input(2)), b.Ints(q.N, blocks, 1))
	if q.Scales.DType != graph.Float {
		scale = b.Cast(scale, graph.Float)
	}
	w := b.Reshape(b.Mul(b.Cast(codes, graph.Float), scale), b.Ints(q.N, blocks*bs))
	if blocks*bs != q.K {
		w = b.Slice(w, 0, q.K, 1)
	}
	if q.Scales.DType != graph.Float {
		w = b.Cast(w, q.Scales.DType)
	}
	return w
}

// dequantizeLinear is DequantizeOp's opset-21 form (see there).
func (q *NBits) dequantizeLinear(b *opb.Builder, n *graph.Node, late func(*graph.Value) *graph.Value) *graph.Value {
	blocks, bs := q.blocks(), q.BlockSize
	codes, err := q.B.Reinterpreted(n.Input(1).Name+".uint4", graph.Uint4, []int64{q.N, blocks * bs})
	if err != nil {
		b.Fail(err)
		return nil
	}
	zp, err := q.uint4ZeroPoints(n.Input(1).Name + ".zero_points.uint4")
	if err != nil {
		b.Fail(err)
		return nil
	}
	scale := b.Reshape(late(n.Input(2)), b.Ints(q.N, blocks))
	// ONNX Runtime's CUDA DequantizeLinear has float32 and float16 scales
	// but no bfloat16: bfloat16 scales go through float16 where every one
	// converts exactly (a float16 weight is half a float32 one's traffic),
	// else through float32. The scale converts exactly, but a code
	// difference in [−15, 15] times an 8-bit significand can need 12 bits
	// and float16 keeps 11, so the float16 product can round once before
	// the cast to bfloat16 rounds again: where the first rounding lands on
	// a bfloat16 midpoint, the weight is one bfloat16 unit from the float32
	// path's (TestHalfDequantize: about 1% of products), where the int4
	// quantization step is at least 17 such units.
	if q.Scales.DType == graph.BFloat16 {
		via := graph.Float
		if HalfExact(q.Scales) {
			via = graph.Float16
		}
		scale = b.Cast(scale, via)
	}
	w := b.Op("DequantizeLinear", []*graph.Value{b.Const(codes), scale, b.Const(zp)}, graph.AttrI("axis", 1), graph.AttrI("block_size", bs))
	if blocks*bs != q.K {
		w = b.Slice(w, 0, q.K, 1)
	}
	if q.Scales.DType == graph.BFloat16 {
		w = b.Cast(w, graph.BFloat16)
	}
	return w
}

// uint4ZeroPoints are the node's zero points as a uint4 [N, blocks]
// tensor packed over the whole tensor (DequantizeLinear's layout), from
// MatMulNBits' per-row packed bytes, or 8 everywhere when it has none.
func (q *NBits) uint4ZeroPoints(name string) (*graph.Tensor, error) {
	blocks := q.blocks()
	var zp []byte
	if q.ZeroPoints != nil {
		var err error
		if zp, err = q.ZeroPoints.Bytes(); err != nil {
			return nil, err
		}
	}
	out := make([]byte, (q.N*blocks+1)/2)
	for r := range q.N {
		for kb := range blocks {
			v := q.zeroPoint(zp, r, kb)
			j := r*blocks + kb
			out[j/2] |= byte(v) << (4 * (j % 2))
		}
	}
	return graph.NewTensor(name, graph.Uint4, []int64{q.N, blocks}, out), nil
}

// HalfExact reports whether every value of a float tensor converts to
// float16 exactly: zero, or finite with a magnitude in float16's normal
// range and no more significant bits than float16 keeps (always true of
// bfloat16's 8 there).
func HalfExact(t *graph.Tensor) bool {
	vals, err := t.Floats()
	if err != nil {
		return false
	}
	for _, v := range vals {
		if v == 0 {
			continue
		}
		a := math.Abs(float64(v))
		if !(a >= 0x1p-14 && a <= 65504) || math.Float32bits(v)&0x1fff != 0 {
			return false
		}
	}
	return true
}
