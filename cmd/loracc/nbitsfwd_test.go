package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime/train"
)

// TestNBitsDequantOnCPU: the int4 Llama's step compiled for CUDA (fp32,
// static 4 × 32) has no MatMulNBits left in its forward — each product
// is its weight dequantized in the step and a MatMul (nbits-dequant) —
// and, run on ONNX Runtime's CPU provider, five SGD steps give the loss
// of the step compiled without that rewrite within 1e-5 relative (the
// same products, summed in another order) and the params within 1e-3 of
// their update.
func TestNBitsDequantOnCPU(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	o := testmodels.TinyGenai()
	o.Int4 = true
	m, err := testmodels.GenaiLlamaStandard(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "int4.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lora := filepath.Join(dir, "int4.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", lora)
	a, err := adapter.Load(filepath.Join(dir, "int4.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	params := train.FromAdapter(a)
	export := func(name string, extra ...string) (string, TrainIO) {
		out := filepath.Join(dir, name)
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--provider", "cuda", "--optimizer", "sgd",
			"--static", "batch_size=4,sequence_length=32", "-o", out}, extra...)...)
		return out, readTrainIO(t, out)
	}
	onDir, onIO := export("dequant")
	offDir, offIO := export("nbits", "--disable-rewrite", "nbits-dequant")
	nbits := func(dir string) int {
		return countNodes(t, filepath.Join(dir, "train.onnx"), func(n *graph.Node, _ *infer.Inferer) bool { return n.Op == "MatMulNBits" })
	}
	if k, base := nbits(onDir), nbits(offDir); k != 0 || base == 0 {
		t.Fatalf("%d MatMulNBits nodes with nbits-dequant, %d without; want 0 and some", k, base)
	}
	batch := llamaBatch(4, 32, int64(o.Vocab))
	x := newTrainer(t, e, onDir, onIO.Train, batch, params)
	y := newTrainer(t, e, offDir, offIO.Train, batch, params)
	stepsAlike(t, x, y, params, 5, 1e-5, 1e-3)
}

// TestNBitsHalfDequant: the 7B benchmark's int4 Llama form (opset 21,
// bfloat16 scales after --compute-dtype bf16) compiled for CUDA
// dequantizes every weight through float16 — no float32 [N, K] weight —
// runs each forward product as one float16 Gemm with transB (no
// transposed weight written), and keeps the backward's products in
// bfloat16; a scale float16 cannot hold exactly sends that weight through
// float32 again.
func TestNBitsHalfDequant(t *testing.T) {
	dir := t.TempDir()
	lc := testmodels.DefaultLlama()
	lc.Int4, lc.Opset = true, 21
	m, err := testmodels.Llama(lc)
	if err != nil {
		t.Fatal(err)
	}
	// one scale of the first weight below float16's normal range
	var odd, oddCodes string
	for _, n := range m.Graph.Nodes {
		if n.Op == "MatMulNBits" {
			s := n.Input(2).Const
			vals, err := s.Floats()
			if err != nil {
				t.Fatal(err)
			}
			vals[0] = 1e-6
			ns, err := graph.NewFloatTensor(s.Name, s.DType, s.Dims, vals)
			if err != nil {
				t.Fatal(err)
			}
			n.Input(2).Const, odd, oddCodes = ns, n.Name, n.Input(1).Name
			break
		}
	}
	if odd == "" {
		t.Fatal("no MatMulNBits in the int4 Llama")
	}
	path := filepath.Join(dir, "int4.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	isNBits := func(n *graph.Node, _ *infer.Inferer) bool { return n.Op == "MatMulNBits" }
	products := countNodes(t, path, isNBits)
	lora := filepath.Join(dir, "int4.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--target", `self_attn\.[qkvo]_proj$`, "-o", lora)
	out := filepath.Join(dir, "train")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--provider", "cuda", "--compute-dtype", "bf16",
		"--static", "batch_size=2,sequence_length=16", "-o", out)
	tm, err := graph.Load(filepath.Join(out, "train.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	inf := infer.New()
	// every weight's dequantization in float16 but the odd one's, in
	// float32 (the forward's; its backward too if the step needs dX there)
	var half, oddF32, otherF32, halfGemm, weightT, nbitsLeft int
	for _, n := range tm.Graph.Nodes {
		switch n.Op {
		case "DequantizeLinear":
			fromOdd := strings.HasPrefix(n.Input(0).Name, oddCodes)
			switch dt := inf.DType(n.Output(0)); {
			case dt == graph.Float16 && !fromOdd:
				half++
			case dt == graph.Float && fromOdd:
				oddF32++
			default:
				otherF32++
			}
		case "Gemm":
			if n.AttrInt("transB", 0) == 1 && inf.DType(n.Output(0)) == graph.Float16 {
				halfGemm++
			}
		case "Transpose":
			p, _ := n.Input(0).Producer()
			for p != nil && p.Op == "Cast" {
				p, _ = p.Input(0).Producer()
			}
			if p != nil && p.Op == "DequantizeLinear" {
				weightT++
			}
		case "MatMulNBits":
			nbitsLeft++
		}
	}
	if half < products-1 || oddF32 == 0 || otherF32 != 0 {
		t.Errorf("%d float16 DequantizeLinear (want ≥ %d), %d float32 of the weight with a scale float16 cannot hold (want ≥ 1), %d others (want 0)", half, products-1, oddF32, otherF32)
	}
	if halfGemm != products-1 {
		t.Errorf("%d float16 Gemm products, want %d", halfGemm, products-1)
	}
	if weightT != 1 {
		t.Errorf("%d transposed dequantized weights, want 1 (the float32-path weight's bfloat16 MatMul)", weightT)
	}
	if nbitsLeft != 0 {
		t.Errorf("%d MatMulNBits left", nbitsLeft)
	}
}
