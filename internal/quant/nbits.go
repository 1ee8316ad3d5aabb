package quant

// MatMulNBits (com.microsoft): Y = A · dequant(B)ᵀ, B holding N rows of K
// codes of `bits` bits, packed low-first in blocks of block_size along K,
// each block with a scale and a zero point (packed uint8, default
// 2^(bits-1)). A LoRA branch sits beside it like beside any MatMul; fuse
// re-quantizes W + s·ΔW block by block with the blocks' own scales and
// zero points, or replaces the node by a float MatMul.

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// NBits describes a MatMulNBits weight.
type NBits struct {
	K, N, Bits, BlockSize int64
	B, Scales, ZeroPoints *graph.Tensor // ZeroPoints nil: the default
}

func (q *NBits) blocks() int64 { return (q.K + q.BlockSize - 1) / q.BlockSize }

// FromNBits reads a MatMulNBits node's weight; reason says why not.
func FromNBits(n *graph.Node) (*NBits, string) {
	q := &NBits{K: n.AttrInt("K", 0), N: n.AttrInt("N", 0), Bits: n.AttrInt("bits", 4), BlockSize: n.AttrInt("block_size", 0)}
	if q.K <= 0 || q.N <= 0 || q.BlockSize <= 0 || q.Bits < 2 || q.Bits > 8 {
		return nil, fmt.Sprintf("MatMulNBits with K=%d N=%d bits=%d block_size=%d is not supported", q.K, q.N, q.Bits, q.BlockSize)
	}
	if q.B, q.Scales = graph.ConstTensor(n.Input(1)), graph.ConstTensor(n.Input(2)); q.B == nil || q.Scales == nil {
		return nil, "MatMulNBits weight or scales are not constants"
	}
	if n.NumInputs() > 3 && n.Input(3) != nil {
		if q.ZeroPoints = graph.ConstTensor(n.Input(3)); q.ZeroPoints == nil || q.ZeroPoints.DType != graph.Uint8 {
			return nil, "MatMulNBits zero points are not packed uint8 constants"
		}
	}
	if n.NumInputs() > 4 && n.Input(4) != nil {
		return nil, "MatMulNBits with g_idx is not supported"
	}
	blob := q.BlockSize * q.Bits / 8
	if q.B.DType != graph.Uint8 || len(q.B.Dims) != 3 || q.B.Dims[0] != q.N || q.B.Dims[1] != q.blocks() || q.B.Dims[2] != blob {
		return nil, fmt.Sprintf("MatMulNBits weight %s%v does not match K=%d N=%d", q.B.DType, q.B.Dims, q.K, q.N)
	}
	if ns, err := q.Scales.NumElements(); err != nil || ns != q.N*q.blocks() || !q.Scales.DType.IsFloat() {
		return nil, "MatMulNBits scales do not match N × blocks"
	}
	return q, ""
}

// code reads code k (0-based along the packed bits) of a byte slice.
func code(raw []byte, k, bits int64) int64 {
	bit := k * bits
	v := int64(0)
	for b := int64(0); b < bits; b++ {
		if raw[(bit+b)/8]>>((bit+b)%8)&1 != 0 {
			v |= 1 << b
		}
	}
	return v
}

func putCode(raw []byte, k, bits, v int64) {
	bit := k * bits
	for b := int64(0); b < bits; b++ {
		pos, shift := (bit+b)/8, (bit+b)%8
		raw[pos] &^= 1 << shift
		if v>>b&1 != 0 {
			raw[pos] |= 1 << shift
		}
	}
}

// zeroPoint is block kb of row n's zero point.
func (q *NBits) zeroPoint(zp []byte, n, kb int64) int64 {
	if zp == nil {
		return 1 << (q.Bits - 1)
	}
	perRow := (q.blocks()*q.Bits + 7) / 8
	return code(zp[n*perRow:(n+1)*perRow], kb, q.Bits)
}

// dequantize returns W as float64 [K, N] (MatMul orientation).
func (q *NBits) Dequantize() ([]float64, error) {
	raw, err := q.B.Bytes()
	if err != nil {
		return nil, err
	}
	scales, err := q.Scales.Floats()
	if err != nil {
		return nil, err
	}
	var zp []byte
	if q.ZeroPoints != nil {
		if zp, err = q.ZeroPoints.Bytes(); err != nil {
			return nil, err
		}
	}
	blob := q.BlockSize * q.Bits / 8
	w := make([]float64, q.K*q.N)
	for n := int64(0); n < q.N; n++ {
		for k := int64(0); k < q.K; k++ {
			kb := k / q.BlockSize
			block := raw[(n*q.blocks()+kb)*blob : (n*q.blocks()+kb+1)*blob]
			c := code(block, k%q.BlockSize, q.Bits)
			w[k*q.N+n] = float64(c-q.zeroPoint(zp, n, kb)) * float64(scales[n*q.blocks()+kb])
		}
	}
	return w, nil
}

// requantize packs w ([K, N]) on the blocks' grid and returns the largest
// absolute rounding error.
func (q *NBits) Requantize(w []float64) ([]byte, float64, error) {
	raw, err := q.B.Bytes()
	if err != nil {
		return nil, 0, err
	}
	out := append([]byte(nil), raw...)
	scales, err := q.Scales.Floats()
	if err != nil {
		return nil, 0, err
	}
	var zp []byte
	if q.ZeroPoints != nil {
		if zp, err = q.ZeroPoints.Bytes(); err != nil {
			return nil, 0, err
		}
	}
	blob := q.BlockSize * q.Bits / 8
	top := int64(1)<<q.Bits - 1
	worst := 0.0
	for n := int64(0); n < q.N; n++ {
		for k := int64(0); k < q.K; k++ {
			kb := k / q.BlockSize
			s := float64(scales[n*q.blocks()+kb])
			z := q.zeroPoint(zp, n, kb)
			v := w[k*q.N+n]
			c := int64(0)
			if s != 0 {
				c = int64(math.RoundToEven(v/s)) + z
			}
			c = max(0, min(top, c))
			worst = math.Max(worst, math.Abs(float64(c-z)*s-v))
			putCode(out[(n*q.blocks()+kb)*blob:(n*q.blocks()+kb+1)*blob], k%q.BlockSize, q.Bits, c)
		}
	}
	return out, worst, nil
}
