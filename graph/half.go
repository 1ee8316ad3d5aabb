package graph

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Half-precision conversions live here, by hand, rather than in a dependency:
// they are a few dozen lines, the rounding rules are the ones IEEE 754 and
// PyTorch use (round to nearest, ties to even), and every branch is checked
// exhaustively in half_test.go.

// Float16ToFloat32 widens an IEEE 754 binary16 value. Every fp16 value,
// subnormals included, is exactly representable in fp32; NaN payloads are
// kept (shifted into the top of the fp32 mantissa).
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		// Subnormal: value mant·2⁻²⁴. Shift the leading one up to the
		// implicit-bit position, lowering the exponent as we go.
		e := uint32(127 - 14)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	case exp == 0x1f:
		return math.Float32frombits(sign | 0xff<<23 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// Float32ToFloat16 narrows to IEEE 754 binary16, rounding to nearest with
// ties to even. Values that round past 65504 become ±inf, tiny values become
// subnormals or ±0, and NaN stays NaN (quieted, sign and top payload bits
// kept) so a NaN never turns into an infinity.
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7c00 | 0x200 | uint16(mant>>13)
	}
	e := exp - 127 + 15 // biased fp16 exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e >= 1 {
		// Normal result. Adding one to the packed exponent|mantissa
		// carries into the exponent and, from 0x7bff, into infinity,
		// which is exactly the overflow rule.
		h := uint32(e)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	if exp == 0 {
		// fp32 subnormals are below 2⁻¹²⁶, far under half of the
		// smallest fp16 subnormal (2⁻²⁴).
		return sign
	}
	// Subnormal (or zero) result: the value is m·2^(exp-150) with the
	// implicit bit in m, and fp16 subnormals count units of 2⁻²⁴, so the
	// result is m >> (126-exp) rounded.
	m := mant | 0x800000
	shift := uint32(126 - exp) // ≥ 14 here
	if shift > 24 {
		// m < 2²⁴, so m/2^shift < 1/2: rounds to zero.
		return sign
	}
	q := m >> shift
	rest := m & (1<<shift - 1)
	half := uint32(1) << (shift - 1)
	if rest > half || (rest == half && q&1 == 1) {
		q++ // may carry into the smallest normal, 0x0400, which is right
	}
	return sign | uint16(q)
}

// BFloat16ToFloat32 widens a bfloat16 value; bf16 is the top half of fp32,
// so this is exact.
func BFloat16ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// Float32ToBFloat16 narrows to bfloat16, rounding to nearest with ties to
// even (as PyTorch does). Overflow rounds to ±inf. NaN stays NaN: plain
// truncation could drop every payload bit and leave an infinity, so the
// quiet bit is set.
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// DecodeFloats converts little-endian fp32, fp16, bf16 or fp64 bytes to
// float32. fp64 values are rounded once to the nearest float32.
func DecodeFloats(dt DataType, raw []byte) ([]float32, error) {
	size, err := floatSize(dt)
	if err != nil {
		return nil, err
	}
	if len(raw)%size != 0 {
		return nil, fmt.Errorf("decode %s: %d bytes is not a multiple of %d", dt, len(raw), size)
	}
	out := make([]float32, len(raw)/size)
	switch dt {
	case Float:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
	case Float16:
		for i := range out {
			out[i] = Float16ToFloat32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case BFloat16:
		for i := range out {
			out[i] = BFloat16ToFloat32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	case Double:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:])))
		}
	}
	return out, nil
}

// EncodeFloats converts float32 values to little-endian bytes of dt (fp32,
// fp16, bf16 or fp64), rounding each value once, straight from float32.
func EncodeFloats(dt DataType, vals []float32) ([]byte, error) {
	size, err := floatSize(dt)
	if err != nil {
		return nil, err
	}
	out := make([]byte, len(vals)*size)
	switch dt {
	case Float:
		for i, v := range vals {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
	case Float16:
		for i, v := range vals {
			binary.LittleEndian.PutUint16(out[2*i:], Float32ToFloat16(v))
		}
	case BFloat16:
		for i, v := range vals {
			binary.LittleEndian.PutUint16(out[2*i:], Float32ToBFloat16(v))
		}
	case Double:
		for i, v := range vals {
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(float64(v)))
		}
	}
	return out, nil
}

// floatSize is the element size of the float types DecodeFloats and
// EncodeFloats handle, and an error for every other type.
func floatSize(dt DataType) (int, error) {
	switch dt {
	case Float:
		return 4, nil
	case Float16, BFloat16:
		return 2, nil
	case Double:
		return 8, nil
	}
	return 0, fmt.Errorf("%s is not a float type (want float32, float16, bfloat16 or float64)", dt)
}
