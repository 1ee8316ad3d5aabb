package trainstep

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/runtime"
)

// gbqCase is one GatherBlockQuantized configuration.
type gbqCase struct {
	name        string
	data        graph.DataType // uint8 (packed), int4 or uint4
	bits, block int64
	vocab, dim  int64   // rows and codes per row (the output's last dim)
	inner       []int64 // dims between the rows and the quantized axis
	scales      graph.DataType
	zp          bool
	idx         graph.DataType // int32 or int64
	idxDims     []int64
	tied        bool // data is a Reshape of a MatMulNBits-shaped [V, blocks, blob] weight
	external    bool // tables in an external data file, reloaded before decomposing
}

// TestGatherBlockQuantizedMatchesORT: the decomposition of com.microsoft
// GatherBlockQuantized gives ORT's own CPU kernel's output bit for bit
// (and so ‖Δ‖/‖ref‖ = 0 ≤ 1e-6) for the builder's tied int4 table
// (uint8, read through the Reshape of the lm_head's MatMulNBits weight)
// and the quantizer's int4/uint4 tables, 8-bit uint8 tables, blocks of
// 16, 32 and 64 with partial last blocks and odd block counts (the
// packed zero points' padding nibble), float32 and float16 scales, with
// and without zero points, int32 and int64 indices of rank 1 and 2 with
// repeated and negative ids, a rank-3 table, and an int4 table in an
// external data file (read as uint8 in place).
func TestGatherBlockQuantizedMatchesORT(t *testing.T) {
	e := ortest.Env(t)
	bs := []int64{2, 6}
	for _, c := range []gbqCase{
		{name: "builder tied int4, zero points", data: graph.Uint8, bits: 4, block: 32, vocab: 40, dim: 64, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs, tied: true},
		{name: "builder tied int4, symmetric, fp16", data: graph.Uint8, bits: 4, block: 32, vocab: 40, dim: 96, scales: graph.Float16, idx: graph.Int64, idxDims: bs, tied: true},
		{name: "uint8/4, block 16, odd blocks, zp, int32", data: graph.Uint8, bits: 4, block: 16, vocab: 33, dim: 80, scales: graph.Float, zp: true, idx: graph.Int32, idxDims: bs},
		{name: "uint8/4, block 64, partial block, zp, fp16", data: graph.Uint8, bits: 4, block: 64, vocab: 20, dim: 96, scales: graph.Float16, zp: true, idx: graph.Int64, idxDims: []int64{9}},
		{name: "uint8/8, zp", data: graph.Uint8, bits: 8, block: 32, vocab: 30, dim: 80, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs},
		{name: "uint8/8, fp16, int32", data: graph.Uint8, bits: 8, block: 16, vocab: 30, dim: 64, scales: graph.Float16, idx: graph.Int32, idxDims: bs},
		{name: "uint4, odd blocks, zp", data: graph.Uint4, bits: 4, block: 32, vocab: 25, dim: 96, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs},
		{name: "uint4, no zp (default 0)", data: graph.Uint4, bits: 4, block: 16, vocab: 25, dim: 64, scales: graph.Float, idx: graph.Int32, idxDims: bs},
		{name: "int4, zp, block 64", data: graph.Int4, bits: 4, block: 64, vocab: 25, dim: 128, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs},
		{name: "int4, fp16, no zp", data: graph.Int4, bits: 4, block: 16, vocab: 25, dim: 48, scales: graph.Float16, idx: graph.Int32, idxDims: []int64{7}},
		{name: "int4, external data", data: graph.Int4, bits: 4, block: 32, vocab: 64, dim: 64, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs, external: true},
		{name: "rank-3 table", data: graph.Uint8, bits: 4, block: 16, vocab: 12, dim: 32, inner: []int64{3}, scales: graph.Float, zp: true, idx: graph.Int64, idxDims: bs},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			m, feeds := gbqModel(t, c)
			ref := filepath.Join(dir, "ref.onnx")
			if err := graph.Save(m, ref, graph.SaveOptions{Externalize: c.external}); err != nil {
				t.Fatal(err)
			}
			if c.external {
				var err error
				if m, err = graph.Load(ref); err != nil {
					t.Fatal(err)
				}
				if tb := m.Graph.Lookup("table"); tb == nil || tb.Const == nil || !tb.Const.IsExternal() {
					t.Fatal("the table is not external")
				}
			}
			if k, err := Decompose(m); err != nil || k != 1 {
				t.Fatalf("Decompose: %d, %v", k, err)
			}
			m.Graph.Walk(func(n *graph.Node) {
				if n.Domain != "" {
					t.Errorf("node %q keeps domain %s", n.Name, n.Domain)
				}
				if c.external && n.Op == "Gather" && n.Input(0).Const != nil && n.Input(0).Const.DType == graph.Uint8 && n.Input(0).Name != "zero_points.rows" && !n.Input(0).Const.IsExternal() {
					t.Errorf("node %q reads a copy of the table in memory", n.Name)
				}
				if c.tied && n.Op == "Gather" && n.Input(0).Name == "table" {
					t.Errorf("node %q gathers from the reshaped table, not the weight", n.Name)
				}
			})
			dec := filepath.Join(dir, "dec.onnx")
			if err := graph.Save(m, dec, graph.SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			want, got := runAll(t, e, ref, feeds)["out"], runAll(t, e, dec, feeds)["out"]
			if fmt.Sprint(want.Shape) != fmt.Sprint(got.Shape) || want.DType != got.DType {
				t.Fatalf("output %s%v, ORT %s%v", got.DType, got.Shape, want.DType, want.Shape)
			}
			w, err := graph.DecodeFloats(want.DType, want.Data)
			if err != nil {
				t.Fatal(err)
			}
			g, _ := graph.DecodeFloats(got.DType, got.Data)
			var num, den float64
			for i := range w {
				d := float64(g[i] - w[i])
				num, den = num+d*d, den+float64(w[i])*float64(w[i])
			}
			if rel := math.Sqrt(num / den); !(rel <= 1e-6) || !bytes.Equal(want.Data, got.Data) {
				t.Errorf("‖Δ‖/‖ref‖ = %.3g, bytes equal %v", rel, bytes.Equal(want.Data, got.Data))
			}
		})
	}
}

// gbqModel builds one GatherBlockQuantized node over random constant
// tables and an indices input (with feeds: every row's id, repeated, and
// negative ids).
func gbqModel(t *testing.T, c gbqCase) (*graph.Model, map[string]runtime.Tensor) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(c.vocab*131+c.dim), uint64(c.block)))
	m := graph.NewModel(17)
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	g := m.Graph
	b := &graph.Builder{G: g, Prefix: "t"}
	randBytes := func(n int64) []byte {
		raw := make([]byte, n)
		for i := range raw {
			raw[i] = byte(rng.IntN(256))
		}
		return raw
	}
	rows := c.vocab
	lead := append([]int64{c.vocab}, c.inner...)
	for _, d := range c.inner {
		rows *= d
	}
	blocks := (c.dim + c.block - 1) / c.block
	var data *graph.Value
	if c.data == graph.Uint8 {
		width := c.dim * c.bits / 8
		if c.tied { // the lm_head's MatMulNBits weight [V, blocks, blob], Reshaped as the builder does
			blob := c.block * c.bits / 8
			w := b.Const(graph.NewTensor("lm_head.MatMul.weight_Q4G32", graph.Uint8, []int64{c.vocab, blocks, blob}, randBytes(c.vocab*blocks*blob)))
			data = b.Op("Reshape", "table", []*graph.Value{w, b.Int64s("table.shape", []int64{c.vocab, width})})
		} else {
			data = b.Const(graph.NewTensor("table", graph.Uint8, append(append([]int64(nil), lead...), width), randBytes(rows*width)))
		}
	} else {
		data = b.Const(graph.NewTensor("table", c.data, append(append([]int64(nil), lead...), c.dim), randBytes(rows*c.dim/2)))
	}
	sv := make([]float32, rows*blocks)
	for i := range sv {
		sv[i] = float32(0.005+0.05*rng.Float64()) * float32(1-2*rng.IntN(2))
	}
	st, err := graph.NewFloatTensor("scales", c.scales, append(append([]int64(nil), lead...), blocks), sv)
	if err != nil {
		t.Fatal(err)
	}
	ins := []*graph.Value{data, nil, b.Const(st)}
	if c.zp {
		if c.data == graph.Uint8 {
			w := (blocks*c.bits + 7) / 8
			ins = append(ins, b.Const(graph.NewTensor("zero_points", graph.Uint8, append(append([]int64(nil), lead...), w), randBytes(rows*w))))
		} else {
			ins = append(ins, b.Const(graph.NewTensor("zero_points", c.data, append(append([]int64(nil), lead...), blocks), randBytes((rows*blocks+1)/2))))
		}
	}
	shape := fixedDims(c.idxDims...)
	n, err := graph.NumElements(c.idxDims)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = rng.Int64N(c.vocab)
	}
	ids[1], ids[n-1] = ids[0], -1 // a repeated id, and the last row counted from the end
	raw := make([]byte, 0, 8*n)
	for _, id := range ids {
		if c.idx == graph.Int32 {
			raw = binary.LittleEndian.AppendUint32(raw, uint32(int32(id)))
		} else {
			raw = binary.LittleEndian.AppendUint64(raw, uint64(id))
		}
	}
	feeds := map[string]runtime.Tensor{"ids": {DType: c.idx, Shape: c.idxDims, Data: raw}}
	ins[1] = g.AddInput("ids", &graph.TensorType{DType: c.idx, Shape: shape})
	nb := &graph.Builder{G: g, Prefix: "t", Domain: "com.microsoft"}
	out := nb.Op("GatherBlockQuantized", "out", ins, graph.AttrI("gather_axis", 0), graph.AttrI("quantize_axis", int64(len(lead))),
		graph.AttrI("block_size", c.block), graph.AttrI("bits", c.bits))
	// A static shape: onnxruntime_go returns float16 outputs of known shape only.
	out.Type = &graph.TensorType{DType: c.scales, Shape: fixedDims(append(append(append([]int64(nil), c.idxDims...), c.inner...), c.dim)...)}
	g.AddOutput(out)
	return m, feeds
}

// TestGatherBlockQuantizedRefused: forms the decomposition does not
// support fail with one error naming the node, the op and the attribute
// or input.
func TestGatherBlockQuantizedRefused(t *testing.T) {
	base := gbqCase{data: graph.Uint8, bits: 4, block: 32, vocab: 8, dim: 64, scales: graph.Float, idx: graph.Int64, idxDims: []int64{3}}
	for _, c := range []struct {
		name, want string
		edit       func(n *graph.Node)
	}{
		{"gather_axis", "attribute gather_axis=1 is not supported", func(n *graph.Node) { n.Attr("gather_axis").I = 1 }},
		{"quantize_axis", "attribute quantize_axis=0 is not supported", func(n *graph.Node) { n.Attr("quantize_axis").I = 0 }},
		{"bits", "attribute bits=2 is not supported", func(n *graph.Node) { n.Attr("bits").I = 2 }},
		{"block_size", "attribute block_size=24", func(n *graph.Node) { n.Attr("block_size").I = 24 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, _ := gbqModel(t, base)
			var node *graph.Node
			m.Graph.Walk(func(n *graph.Node) {
				if n.Op == "GatherBlockQuantized" {
					node = n
				}
			})
			c.edit(node)
			_, err := Decompose(m)
			want := fmt.Sprintf("node %q (com.microsoft GatherBlockQuantized): %s", node.Name, c.want)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Decompose: %v, want %q", err, want)
			}
		})
	}
}

// fixedDims are known dims of the given sizes.
func fixedDims(sizes ...int64) []graph.Dim {
	dims := make([]graph.Dim, len(sizes))
	for i, d := range sizes {
		dims[i] = graph.Dim{Value: d}
	}
	return dims
}
