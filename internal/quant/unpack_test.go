package quant

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/runtime"
)

// TestDequantizeOpMatchesCompileTime: the run-time dequantization of a
// MatMulNBits weight, run by ONNX Runtime, gives the compile-time float
// copy's values bit for bit: 2-, 4- and 8-bit codes, with and without
// zero points (the default then), K a multiple of the block and not (a
// partial last block), an odd block count (the zero points' padding
// nibble), float32 and float16 scales, scales flat and [N, blocks]; and
// at opset 21 the one-DequantizeLinear form of 4-bit codes, the same.
func TestDequantizeOpMatchesCompileTime(t *testing.T) {
	e := ortest.Env(t)
	for _, c := range []struct {
		bits, block, k, n  int64
		zp, fp16, scales2d bool
		opset              int64 // 21: the one-DequantizeLinear form (4 bits)
	}{
		{bits: 4, block: 16, k: 64, n: 5, zp: true, opset: 21},
		{bits: 4, block: 16, k: 40, n: 3, zp: true, opset: 21},
		{bits: 4, block: 32, k: 64, n: 4, opset: 21},
		{bits: 4, block: 16, k: 48, n: 6, zp: true, fp16: true, scales2d: true, opset: 21},
		{bits: 4, block: 16, k: 64, n: 5, zp: true},
		{bits: 4, block: 16, k: 40, n: 3, zp: true}, // 3 blocks: a partial one, odd count
		{bits: 4, block: 32, k: 64, n: 4},
		{bits: 4, block: 16, k: 48, n: 6, zp: true, fp16: true, scales2d: true},
		{bits: 8, block: 16, k: 48, n: 3, zp: true},
		{bits: 8, block: 32, k: 64, n: 2},
		{bits: 2, block: 16, k: 80, n: 3, zp: true},
	} {
		if c.opset == 0 {
			c.opset = 17
		}
		name := fmt.Sprintf("opset=%d/bits=%d/block=%d/K=%d/zp=%v/fp16=%v", c.opset, c.bits, c.block, c.k, c.zp, c.fp16)
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(c.bits), uint64(c.k)))
			blocks := (c.k + c.block - 1) / c.block
			blob := c.block * c.bits / 8
			packed := make([]byte, c.n*blocks*blob)
			for i := range packed {
				packed[i] = byte(r.UintN(256))
			}
			scales := make([]float32, c.n*blocks)
			for i := range scales {
				scales[i] = 0.01 + 0.1*r.Float32()
			}
			sdt := graph.Float
			if c.fp16 {
				sdt = graph.Float16
			}
			sdims := []int64{c.n * blocks}
			if c.scales2d {
				sdims = []int64{c.n, blocks}
			}
			st, err := graph.NewFloatTensor("s", sdt, sdims, scales)
			if err != nil {
				t.Fatal(err)
			}
			m := graph.NewModel(c.opset)
			m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
			g := m.Graph
			gb := &graph.Builder{G: g}
			x := g.AddInput("x", &graph.TensorType{DType: sdt, Shape: []graph.Dim{{Value: 2}, {Value: c.k}}})
			d := g.AddInput("d", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1}}})
			ins := []*graph.Value{x, gb.Const(graph.NewTensor("w_Q", graph.Uint8, []int64{c.n, blocks, blob}, packed)), gb.Const(st)}
			if c.zp {
				zp := make([]byte, c.n*((blocks*c.bits+7)/8))
				for i := range zp {
					zp[i] = byte(r.UintN(256))
				}
				ins = append(ins, gb.Const(graph.NewTensor("zp", graph.Uint8, []int64{int64(len(zp))}, zp)))
			}
			nb := &graph.Builder{G: g, Prefix: "q", Domain: "com.microsoft"}
			nb.Op("MatMulNBits", "y", ins, graph.AttrI("K", c.k), graph.AttrI("N", c.n), graph.AttrI("bits", c.bits), graph.AttrI("block_size", c.block))
			node := g.Nodes[len(g.Nodes)-1]
			q, reason := FromNBits(node)
			if q == nil {
				t.Fatal(reason)
			}
			b := opb.New(m, "dq", "dq", infer.New())
			w := q.DequantizeOp(b, node, b.Cast(d, graph.Bool))
			if err := b.Err(); err != nil {
				t.Fatal(err)
			}
			dqs := 0
			for _, n := range g.Nodes {
				if n.Op == "DequantizeLinear" {
					dqs++
				}
			}
			if want := map[bool]int{true: 1, false: 0}[c.opset >= 21]; dqs != want {
				t.Errorf("%d DequantizeLinear nodes, want %d", dqs, want)
			}
			w.Type = &graph.TensorType{DType: sdt, Shape: []graph.Dim{{Value: c.n}, {Value: c.k}}}
			g.AddOutput(w)
			raw, err := graph.Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			s, err := e.NewSessionFromBytes(raw, runtime.SessionOptions{IntraOpThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			feeds := map[string]runtime.Tensor{
				"d": runtime.FloatTensor([]int64{1}, []float32{0.5}),
				"x": {DType: sdt, Shape: []int64{2, c.k}, Data: make([]byte, sdt.ByteSize(2*c.k))},
			}
			out, err := s.Run(feeds, []string{w.Name})
			if err != nil {
				t.Fatal(err)
			}
			want, err := q.Dequantize() // [K, N]
			if err != nil {
				t.Fatal(err)
			}
			got := out[w.Name]
			for j := range c.n {
				for k := range c.k {
					wv := float32(want[k*c.n+j])
					var gv float32
					if c.fp16 {
						gv = graph.Float16ToFloat32(binary.LittleEndian.Uint16(got.Data[2*(j*c.k+k):]))
						wv = graph.Float16ToFloat32(graph.Float32ToFloat16(wv))
					} else {
						gv = decodeFloat(got.Data, j*c.k+k)
					}
					if gv != wv {
						t.Fatalf("W[%d, %d] = %v at run time, %v at compile time", j, k, gv, wv)
					}
				}
			}
		})
	}
}

func decodeFloat(raw []byte, i int64) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
}

// TestHalfDequantize checks the arithmetic behind DequantizeOp's float16
// path for bfloat16 scales: over every bfloat16 significand at three
// exponents and every code difference in [−15, 15], the product rounded
// to float16 and then to bfloat16 is the product rounded once to
// bfloat16 (the float32 path) or one bfloat16 unit from it, and rarely
// that; and HalfExact accepts exactly the scales float16 holds.
func TestHalfDequantize(t *testing.T) {
	var total, off int
	for _, e := range []int{-12, -7, 0} {
		for m := range 128 {
			s := graph.BFloat16ToFloat32(uint16((127+e)<<7 | m))
			for d := -15; d <= 15; d++ {
				p := float32(d) * s // exact in float32
				once := graph.Float32ToBFloat16(p)
				twice := graph.Float32ToBFloat16(graph.Float16ToFloat32(graph.Float32ToFloat16(p)))
				total++
				if once != twice {
					off++
					if diff := int(once) - int(twice); diff != 1 && diff != -1 {
						t.Fatalf("scale %g × %d: bfloat16 %#x once, %#x through float16", s, d, once, twice)
					}
				}
			}
		}
	}
	t.Logf("%d of %d products one bfloat16 unit off through float16 (%.2f%%)", off, total, 100*float64(off)/float64(total))
	if off == 0 || off*20 > total {
		t.Errorf("%d of %d products differ: the doc comment's claim (rarely, and not never) is wrong", off, total)
	}
	for _, c := range []struct {
		dt   graph.DataType
		vals []float32
		want bool
	}{
		{graph.BFloat16, []float32{0, 0.01, -3, 65280}, true},
		{graph.BFloat16, []float32{0.01, 1e-6}, false}, // below float16's normal range
		{graph.BFloat16, []float32{70000}, false},
		{graph.Float, []float32{1 + 0x1p-10}, true},
		{graph.Float, []float32{1 + 0x1p-12}, false}, // 13 significant bits
	} {
		st, err := graph.NewFloatTensor("s", c.dt, []int64{int64(len(c.vals))}, c.vals)
		if err != nil {
			t.Fatal(err)
		}
		if got := HalfExact(st); got != c.want {
			t.Errorf("HalfExact(%v) = %v, want %v", c.vals, got, c.want)
		}
	}
}
