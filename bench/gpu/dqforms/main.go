// Command dqforms writes one small ONNX model per way of computing
// Y = X·Wᵀ with W a 4-bit block-quantized weight (block 32, uint4 codes,
// a zero point and a float16 scale per block), for timing each form's
// kernels on the GPU with bench/gpu/latency (bench/gpu/run.sh dqforms).
// It exists because the int4 7B step spends its extra time in ONNX
// Runtime's blocked uint4 DequantizeLinear (docs/gpu-benchmarks.md §3k):
// which standard-op form dequantizes fastest is a measurement, not a
// reading of the source.
//
// Forms, each at the 7B's two weight shapes (N × K = 4096 × 4096 and
// 11008 × 4096), X of 2048 rows (4 × 512) in float16:
//
//	dense     W stored in float16: the GEMM alone, the floor
//	nbits     com.microsoft MatMulNBits, the base's own op
//	blocked   DequantizeLinear(axis 1, block_size 32), as training runs it now
//	blocked32 the same with float32 scales, then a Cast to float16 (the old path)
//	rows      the same bytes viewed as [N·K/32, 32] rows, DequantizeLinear per
//	          row (axis 0): the per-axis kernel instead of the blocked one
//
// The dequantization waits on X (its scale reads Where(x₀ ≠ 0, s, s)), so
// ONNX Runtime cannot fold it into a constant at load, as in the step.
//
//	dqforms -o DIR [-rows 2048]     writes DIR/FORM_NxK.onnx
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

const block = 32

func main() {
	out := flag.String("o", "dqforms", "output folder")
	rows := flag.Int64("rows", 2048, "rows of X (4 × 512 in the 7B step; a few for a CPU check)")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "dqforms:", err)
		os.Exit(1)
	}
	for _, shape := range [][2]int64{{4096, 4096}, {11008, 4096}} {
		for _, form := range []string{"dense", "nbits", "blocked", "blocked32", "rows"} {
			path := filepath.Join(*out, fmt.Sprintf("%s_%dx%d.onnx", form, shape[0], shape[1]))
			if err := write(path, form, *rows, shape[0], shape[1]); err != nil {
				fmt.Fprintln(os.Stderr, "dqforms:", err)
				os.Exit(1)
			}
			fmt.Println(path)
		}
	}
}

// write builds one form's model: input x [1, K] float32, output the sum
// of Y = X·Wᵀ ([1, 1], so fetching it costs nothing).
func write(path, form string, rows, n, k int64) error {
	opset := int64(21)
	m := graph.NewModel(opset)
	m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	g := m.Graph
	b := opb.New(m, "dq", "dq", infer.New())
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1}, {Value: k}}})
	x16 := b.Expand(b.Cast(x, graph.Float16), b.Ints(rows, k))
	after := b.Cast(b.Slice(b.Reshape(x, b.Ints(-1)), 0, 1, 0), graph.Bool)
	late := func(v *graph.Value) *graph.Value { return b.Where(after, v, v) }

	rng := rand.New(rand.NewPCG(1, uint64(n)))
	blocks := k / block
	codes := make([]byte, n*k/2)
	for i := range codes {
		codes[i] = byte(rng.Uint32())
	}
	zps := make([]byte, (n*blocks+1)/2)
	for i := range zps {
		zps[i] = 0x88
	}
	scaleVals := make([]float32, n*blocks)
	for i := range scaleVals {
		scaleVals[i] = 0.002 + 0.001*rng.Float32()
	}
	scale := func(dt graph.DataType, dims ...int64) (*graph.Value, error) {
		t, err := graph.NewFloatTensor("scales", dt, dims, scaleVals)
		if err != nil {
			return nil, err
		}
		return late(b.Const(t)), nil
	}
	gemm := func(w *graph.Value) *graph.Value { return b.Gemm(x16, w, graph.AttrI("transB", 1)) }
	var y *graph.Value
	switch form {
	case "dense":
		w := make([]float32, n*k)
		for i := range w {
			w[i] = 0.01 * (rng.Float32() - 0.5)
		}
		t, err := graph.NewFloatTensor("w", graph.Float16, []int64{n, k}, w)
		if err != nil {
			return err
		}
		y = gemm(b.Const(t))
	case "nbits":
		s, err := scale(graph.Float16, n*blocks)
		if err != nil {
			return err
		}
		zp := b.Const(graph.NewTensor("zp", graph.Uint8, []int64{int64(len(zps))}, zps))
		w := b.Const(graph.NewTensor("w_q4", graph.Uint8, []int64{n, blocks, block / 2}, codes))
		nb := &graph.Builder{G: g, Prefix: "dq", Domain: "com.microsoft"}
		y = nb.Op("MatMulNBits", "mm", []*graph.Value{x16, w, s, zp},
			graph.AttrI("K", k), graph.AttrI("N", n), graph.AttrI("bits", 4), graph.AttrI("block_size", block))
	case "blocked", "blocked32":
		dt := graph.Float16
		if form == "blocked32" {
			dt = graph.Float
		}
		s, err := scale(dt, n, blocks)
		if err != nil {
			return err
		}
		w := b.Op("DequantizeLinear", []*graph.Value{
			b.Const(graph.NewTensor("w_u4", graph.Uint4, []int64{n, k}, codes)), s,
			b.Const(graph.NewTensor("zp_u4", graph.Uint4, []int64{n, blocks}, zps)),
		}, graph.AttrI("axis", 1), graph.AttrI("block_size", block))
		if dt != graph.Float16 {
			w = b.Cast(w, graph.Float16)
		}
		y = gemm(w)
	case "rows":
		s, err := scale(graph.Float16, n*blocks)
		if err != nil {
			return err
		}
		w := b.Op("DequantizeLinear", []*graph.Value{
			b.Const(graph.NewTensor("w_u4", graph.Uint4, []int64{n * blocks, block}, codes)), s,
			b.Const(graph.NewTensor("zp_u4", graph.Uint4, []int64{n * blocks}, zps)),
		}, graph.AttrI("axis", 0))
		y = gemm(b.Reshape(w, b.Ints(n, k)))
	default:
		return fmt.Errorf("unknown form %q", form)
	}
	sum := b.Cast(b.ReduceSum(y, nil, true), graph.Float) // [1, 1]
	if err := b.Err(); err != nil {
		return fmt.Errorf("%s: %w", form, err)
	}
	sum.Type = &graph.TensorType{DType: graph.Float}
	g.AddOutput(sum)
	return graph.Save(m, path, graph.SaveOptions{})
}
