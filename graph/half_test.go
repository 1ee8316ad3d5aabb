package graph

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// f16Value computes an fp16 value from its fields with float64 arithmetic,
// independently of Float16ToFloat32.
func f16Value(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	mant := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(mant, -24)
	case 0x1f:
		if mant != 0 {
			return math.NaN()
		}
		return sign * math.Inf(1)
	}
	return sign * math.Ldexp(1024+mant, exp-25)
}

func TestFloat16ToFloat32Exhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		got := Float16ToFloat32(h)
		want := f16Value(h)
		if math.IsNaN(want) {
			if !math.IsNaN(float64(got)) {
				t.Fatalf("%#04x: got %v, want NaN", h, got)
			}
			if math.Signbit(float64(got)) != (h&0x8000 != 0) {
				t.Fatalf("%#04x: NaN sign lost", h)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != math.Signbit(want) {
			t.Fatalf("%#04x: got %v, want %v", h, got, want)
		}
	}
}

func TestFloat16RoundTripExhaustive(t *testing.T) {
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		back := Float32ToFloat16(Float16ToFloat32(h))
		isNaN := h&0x7c00 == 0x7c00 && h&0x3ff != 0
		if !isNaN {
			if back != h {
				t.Fatalf("%#04x -> %v -> %#04x", h, Float16ToFloat32(h), back)
			}
			continue
		}
		// A NaN comes back as a NaN of the same sign; a quiet NaN comes
		// back bit for bit (signalling ones get the quiet bit).
		if back&0x7c00 != 0x7c00 || back&0x3ff == 0 || back&0x8000 != h&0x8000 {
			t.Fatalf("NaN %#04x came back as %#04x", h, back)
		}
		if h&0x200 != 0 && back != h {
			t.Fatalf("quiet NaN %#04x came back as %#04x", h, back)
		}
	}
}

// refFloat32ToFloat16 rounds by searching the sorted table of non-negative
// fp16 values: nearest wins, a tie goes to the even encoding, and 65536 (the
// first value past the largest finite one, with an even encoding) stands in
// for infinity as IEEE's overflow rule says.
type f16Table struct {
	vals []float64 // index = encoding, 0 ... 0x7c00 (inf as 65536)
}

func newF16Table() f16Table {
	vals := make([]float64, 0x7c01)
	for h := range vals {
		vals[h] = f16Value(uint16(h))
	}
	vals[0x7c00] = 65536
	return f16Table{vals}
}

func (tb f16Table) round(f float32) uint16 {
	x := float64(f)
	if math.IsNaN(x) {
		panic("NaN")
	}
	var sign uint16
	if math.Signbit(x) {
		sign, x = 0x8000, -x
	}
	if x >= 65536 {
		return sign | 0x7c00
	}
	hi := sort.SearchFloat64s(tb.vals, x) // first index with vals[i] >= x
	if tb.vals[hi] == x {
		return sign | uint16(hi)
	}
	lo := hi - 1
	dlo, dhi := x-tb.vals[lo], tb.vals[hi]-x
	switch {
	case dlo < dhi:
		return sign | uint16(lo)
	case dhi < dlo:
		return sign | uint16(hi)
	case lo%2 == 0:
		return sign | uint16(lo)
	}
	return sign | uint16(hi)
}

func TestFloat32ToFloat16AgainstReference(t *testing.T) {
	tb := newF16Table()
	check := func(f float32) {
		t.Helper()
		if math.IsNaN(float64(f)) {
			return
		}
		if got, want := Float32ToFloat16(f), tb.round(f); got != want {
			t.Fatalf("Float32ToFloat16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), got, want)
		}
	}
	// Every fp16 value, its fp32 neighbours and the exact midpoints to the
	// next fp16 value, with their neighbours: this covers every tie and
	// every rounding boundary, subnormal and overflow ones included.
	for h := 0; h < 0x7c00; h++ {
		for _, s := range []uint32{0, 1 << 31} {
			v := f16Value(uint16(h))
			next := tb.vals[h+1]
			mid := float32((v + next) / 2) // exact: fp16 has 11 bits, fp32 24
			for _, f := range []float32{float32(v), mid} {
				b := math.Float32bits(f) | s
				check(math.Float32frombits(b))
				check(math.Float32frombits(b + 1))
				if b&0x7fffffff != 0 {
					check(math.Float32frombits(b - 1))
				}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2_000_000 {
		check(math.Float32frombits(rng.Uint32()))
	}
}

func TestFloat32ToFloat16Cases(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   float32
		want uint16
	}{
		{"one", 1, 0x3c00},
		{"minus zero", float32(math.Copysign(0, -1)), 0x8000},
		{"tie 1+2^-11 to even 1", 1 + 1.0/2048, 0x3c00},
		{"tie 1+3·2^-11 to even", 1 + 3.0/2048, 0x3c02},
		{"just above tie", math.Nextafter32(1+1.0/2048, 2), 0x3c01},
		{"max", 65504, 0x7bff},
		{"below overflow tie", math.Nextafter32(65520, 0), 0x7bff},
		{"overflow tie goes to inf", 65520, 0x7c00},
		{"huge", 1e10, 0x7c00},
		{"-huge", -1e10, 0xfc00},
		{"inf", float32(math.Inf(1)), 0x7c00},
		{"-inf", float32(math.Inf(-1)), 0xfc00},
		{"smallest subnormal", 0x1p-24, 0x0001},
		{"half smallest subnormal ties to 0", 0x1p-25, 0x0000},
		{"above half smallest subnormal", math.Nextafter32(0x1p-25, 1), 0x0001},
		{"1.5 units ties to 2", 3 * 0x1p-25, 0x0002},
		{"2.5 units ties to 2", 5 * 0x1p-25, 0x0002},
		{"largest subnormal", 1023 * 0x1p-24, 0x03ff},
		{"tie into smallest normal", 0x1p-14 - 0x1p-25, 0x0400},
		{"smallest normal", 0x1p-14, 0x0400},
		{"fp32 subnormal", math.Float32frombits(1), 0x0000},
		{"-fp32 subnormal", -math.Float32frombits(1), 0x8000},
	} {
		if got := Float32ToFloat16(tc.in); got != tc.want {
			t.Errorf("%s: Float32ToFloat16(%g) = %#04x, want %#04x", tc.name, tc.in, got, tc.want)
		}
	}
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7f801000} {
		h := Float32ToFloat16(math.Float32frombits(bits))
		if h&0x7c00 != 0x7c00 || h&0x3ff == 0 {
			t.Errorf("NaN %#08x became %#04x, not a NaN", bits, h)
		}
		if (h&0x8000 != 0) != (bits&0x80000000 != 0) {
			t.Errorf("NaN %#08x lost its sign: %#04x", bits, h)
		}
	}
}

func TestBFloat16(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   uint32 // fp32 bits
		want uint16
	}{
		{"one", 0x3f800000, 0x3f80},
		{"tie 1+2^-8 to even", 0x3f808000, 0x3f80},
		{"tie 1+3·2^-8 to even", 0x3f818000, 0x3f82},
		{"above tie", 0x3f808001, 0x3f81},
		{"below tie", 0x3f807fff, 0x3f80},
		{"max float32 overflows", 0x7f7fffff, 0x7f80},
		{"max bf16", 0x7f7f0000, 0x7f7f},
		{"inf", 0x7f800000, 0x7f80},
		{"-inf", 0xff800000, 0xff80},
		{"-zero", 0x80000000, 0x8000},
		{"subnormal rounds up", 0x00008000 | 0x00010000, 0x0002},
		{"subnormal tie to even", 0x00008000, 0x0000},
	} {
		if got := Float32ToBFloat16(math.Float32frombits(tc.in)); got != tc.want {
			t.Errorf("%s: Float32ToBFloat16(%#08x) = %#04x, want %#04x", tc.name, tc.in, got, tc.want)
		}
	}
	for _, bits := range []uint32{0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7fbfffff} {
		h := Float32ToBFloat16(math.Float32frombits(bits))
		if !math.IsNaN(float64(BFloat16ToFloat32(h))) {
			t.Errorf("NaN %#08x became %#04x, not a NaN", bits, h)
		}
		if (h&0x8000 != 0) != (bits&0x80000000 != 0) {
			t.Errorf("NaN %#08x lost its sign: %#04x", bits, h)
		}
	}
	// Every non-NaN bf16 round-trips through fp32.
	for i := 0; i < 1<<16; i++ {
		h := uint16(i)
		f := BFloat16ToFloat32(h)
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := Float32ToBFloat16(f); back != h {
			t.Fatalf("bf16 %#04x -> %v -> %#04x", h, f, back)
		}
	}
}

func TestEncodeDecodeFloats(t *testing.T) {
	vals := []float32{0, 1, -2.5, 1 + 1.0/2048, 65520, 0x1p-24, 3.14159}
	for _, dt := range []DataType{Float, Float16, BFloat16, Double} {
		raw, err := EncodeFloats(dt, vals)
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		if len(raw) != len(vals)*dt.BitSize()/8 {
			t.Fatalf("%s: %d bytes for %d values", dt, len(raw), len(vals))
		}
		got, err := DecodeFloats(dt, raw)
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		for i, v := range vals {
			var want float32
			switch dt {
			case Float, Double:
				want = v
			case Float16:
				want = Float16ToFloat32(Float32ToFloat16(v))
			case BFloat16:
				want = BFloat16ToFloat32(Float32ToBFloat16(v))
			}
			if got[i] != want {
				t.Errorf("%s: value %d: got %v, want %v", dt, i, got[i], want)
			}
		}
	}
	// Little-endian layout, checked by hand.
	raw, _ := EncodeFloats(Float16, []float32{1})
	if raw[0] != 0x00 || raw[1] != 0x3c {
		t.Errorf("fp16 1.0 encoded as % x", raw)
	}
	// fp64 decodes with one rounding to nearest even float32:
	// 1+2^-24 is a tie that goes down to 1, 1+3·2^-24 one that goes up.
	var d []byte
	for _, b := range []uint64{0x3ff0000010000000, 0x3ff0000030000000} {
		d = binary.LittleEndian.AppendUint64(d, b)
	}
	got, err := DecodeFloats(Double, d)
	if err != nil || got[0] != 1 || got[1] != 1+0x1p-22 {
		t.Errorf("fp64 decode: %v %v", got, err)
	}
	if _, err := DecodeFloats(Float16, []byte{1, 2, 3}); err == nil {
		t.Error("odd fp16 length: no error")
	}
	if _, err := DecodeFloats(Int64, make([]byte, 8)); err == nil {
		t.Error("int64: no error")
	}
	if _, err := EncodeFloats(Int32, vals); err == nil {
		t.Error("int32: no error")
	}
}
