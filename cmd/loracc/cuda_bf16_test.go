package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainstep"
)

// bf16Probe is one op to try in bfloat16: its float inputs are [2, 8]
// values ("x") or [8] vectors ("v"), its extra inputs int64 constants.
type bf16Probe struct {
	domain, op string
	ins        string // per input: x [2,8]; t xᵀ; v [8]; b bool [2,8]; int64 constants: a axes, p pads, k axis, e shape, r repeats; q, s: a MatMulNBits weight [2, 1, 8] uint8 and its bf16 scales [2]
	attrs      []*graph.Attr
}

func bf16Probes() []bf16Probe {
	var ps []bf16Probe
	for _, op := range []string{"Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos", "Erf", "Abs", "Sigmoid", "Tanh", "Relu",
		"Identity", "Transpose", "Clip", "Softplus", "Floor", "Round"} {
		ps = append(ps, bf16Probe{op: op, ins: "x"})
	}
	for _, op := range []string{"Softmax", "LogSoftmax"} {
		ps = append(ps, bf16Probe{op: op, ins: "x", attrs: []*graph.Attr{graph.AttrI("axis", -1)}})
	}
	for _, op := range []string{"IsNaN", "IsInf"} {
		ps = append(ps, bf16Probe{op: op, ins: "x"})
	}
	for _, op := range []string{"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual"} {
		ps = append(ps, bf16Probe{op: op, ins: "xx"})
	}
	for _, op := range []string{"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2"} {
		ps = append(ps, bf16Probe{op: op, ins: "xa", attrs: []*graph.Attr{graph.AttrI("keepdims", 1)}})
	}
	ps = append(ps,
		bf16Probe{op: "MatMul", ins: "xt"},
		bf16Probe{op: "Gemm", ins: "xx", attrs: []*graph.Attr{graph.AttrI("transB", 1)}},
		bf16Probe{op: "Where", ins: "bxx"},
		bf16Probe{op: "Pad", ins: "xp"},
		bf16Probe{op: "CumSum", ins: "xk"},
		bf16Probe{op: "Trilu", ins: "x"},
		bf16Probe{op: "Concat", ins: "xx", attrs: []*graph.Attr{graph.AttrI("axis", 0)}},
		bf16Probe{op: "Expand", ins: "xe"},
		bf16Probe{op: "Tile", ins: "xr"},
		bf16Probe{op: "LayerNormalization", ins: "xvv", attrs: []*graph.Attr{graph.AttrI("axis", -1)}},
		bf16Probe{op: "SimplifiedLayerNormalization", ins: "xv", attrs: []*graph.Attr{graph.AttrI("axis", -1)}},
		bf16Probe{domain: "com.microsoft", op: "SkipSimplifiedLayerNormalization", ins: "xxv"},
		bf16Probe{domain: "com.microsoft", op: "SkipLayerNormalization", ins: "xxvv"},
		bf16Probe{domain: "com.microsoft", op: "FusedMatMul", ins: "xx", attrs: []*graph.Attr{graph.AttrI("transB", 1)}},
		bf16Probe{domain: "com.microsoft", op: "FastGelu", ins: "x"},
		bf16Probe{domain: "com.microsoft", op: "Gelu", ins: "x"},
		bf16Probe{domain: "com.microsoft", op: "QuickGelu", ins: "x"},
		bf16Probe{domain: "com.microsoft", op: "BiasGelu", ins: "xv"},
		bf16Probe{domain: "com.microsoft", op: "BiasSoftmax", ins: "xx", attrs: []*graph.Attr{graph.AttrI("axis", -1)}},
		bf16Probe{domain: "com.microsoft", op: "MatMulNBits", ins: "xqs", attrs: []*graph.Attr{
			graph.AttrI("K", 8), graph.AttrI("N", 2), graph.AttrI("bits", 4), graph.AttrI("block_size", 16)}},
	)
	return ps
}

// model is input x float32 [2, 8] → Cast(bf16) → op → Cast(f32):
// the casts run on the GPU, so an op placed on the CPU shows as Memcpy
// nodes in the model ONNX Runtime optimized.
func (p bf16Probe) model() (*graph.Model, error) {
	m := graph.NewModel(18)
	if p.domain != "" {
		m.Opsets = append(m.Opsets, graph.Opset{Domain: p.domain, Version: 1})
	}
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 8}}})
	b := &graph.Builder{G: g}
	xb := b.Op("Cast", "xb", []*graph.Value{x}, graph.AttrI("to", int64(graph.BFloat16)))
	vec := b.Op("Cast", "vb", []*graph.Value{b.Op("ReduceSum", "v32", []*graph.Value{x, b.Int64s("ax0", []int64{0})}, graph.AttrI("keepdims", 0))}, graph.AttrI("to", int64(graph.BFloat16)))
	var ins []*graph.Value
	for i, c := range p.ins {
		switch c {
		case 'x':
			ins = append(ins, xb)
		case 't':
			ins = append(ins, b.Op("Transpose", fmt.Sprintf("t%d", i), []*graph.Value{xb}))
		case 'v':
			ins = append(ins, vec)
		case 'b':
			ins = append(ins, b.Op("Cast", "cond", []*graph.Value{x}, graph.AttrI("to", int64(graph.Bool))))
		case 'a':
			ins = append(ins, b.Int64s("axes", []int64{-1}))
		case 'p':
			ins = append(ins, b.Int64s("pads", []int64{0, 0, 0, 8}))
		case 'k':
			ins = append(ins, b.Int64s("axis", []int64{1}))
		case 'e':
			ins = append(ins, b.Int64s("shape", []int64{3, 2, 8}))
		case 'r':
			ins = append(ins, b.Int64s("repeats", []int64{2, 1}))
		case 'q':
			ins = append(ins, b.Const(graph.NewTensor("w_Q4", graph.Uint8, []int64{2, 1, 8}, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})))
		case 's':
			st, err := graph.NewFloatTensor("w_scales", graph.BFloat16, []int64{2}, []float32{0.5, 0.25})
			if err != nil {
				return nil, err
			}
			ins = append(ins, b.Const(st))
		}
	}
	ob := &graph.Builder{G: g, Domain: p.domain}
	y := ob.Op(p.op, "y_op", ins, p.attrs...)
	y = b.Op("Cast", "y", []*graph.Value{y}, graph.AttrI("to", int64(graph.Float))) // bool outputs too
	g.AddOutput(y)
	return m, nil
}

// cudaPlacement starts a CUDA session on the model at path and says where
// ONNX Runtime put its nodes: cuda (all on the GPU), cpu (Memcpy nodes in
// the optimized model: some node runs on the CPU) or none (the session
// failed, with the error).
func cudaPlacement(t *testing.T, e *runtime.Env, path string) (string, error) {
	t.Helper()
	opt := strings.TrimSuffix(path, ".onnx") + ".ort.onnx"
	s, err := e.NewBoundSession(path, runtime.SessionOptions{Device: "cuda", OptimizedModelPath: opt})
	if err != nil {
		return "none", err
	}
	s.Close()
	om, err := graph.Load(opt)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range om.Graph.Nodes {
		if strings.HasPrefix(n.Op, "Memcpy") {
			return "cpu", nil
		}
	}
	return "cuda", nil
}

// TestCUDABFloat16Kernels checks trainstep.BF16Kernel, the table pass
// legalize keeps bfloat16 ops to, against ONNX Runtime's CUDA provider:
// every op in the table starts a session with the op on the GPU. The log
// lists every probed op as cuda, cpu (placed on the CPU: Memcpy nodes
// appear) or none (the session fails), so the table can grow.
func TestCUDABFloat16Kernels(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	rows := map[string][]string{}
	for _, p := range bf16Probes() {
		m, err := p.model()
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimPrefix(p.domain+"."+p.op, ".")
		path := filepath.Join(dir, name+".onnx")
		if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		status, err := cudaPlacement(t, e, path)
		rows[status] = append(rows[status], name)
		inTable := trainstep.BF16Kernel(p.domain, p.op)
		if inTable && status != "cuda" {
			t.Errorf("%s is in trainstep.BF16Kernel, but in bfloat16 ONNX Runtime runs it: %s (err %v)", name, status, err)
		}
		if !inTable && status == "cuda" {
			t.Logf("%s has a CUDA bfloat16 kernel: it could join trainstep.BF16Kernel", name)
		}
	}
	for _, k := range []string{"cuda", "cpu", "none"} {
		sort.Strings(rows[k])
		t.Logf("bfloat16 %s: %s", k, strings.Join(rows[k], " "))
	}
}
