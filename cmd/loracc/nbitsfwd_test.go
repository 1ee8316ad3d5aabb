package main

import (
	"math"
	"path/filepath"
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
	for step := 1; step <= 5; step++ {
		p, q := x.step(t, step, 1e-2), y.step(t, step, 1e-2)
		lp, lq := scalarOf(t, p["loss"]), scalarOf(t, q["loss"])
		if math.Abs(lp-lq) > 1e-5*math.Abs(lq) {
			t.Errorf("step %d: loss %v with nbits-dequant, %v with MatMulNBits", step, lp, lq)
		}
	}
	for name := range params {
		p, err1 := x.feeds[name].Floats()
		q, err2 := y.feeds[name].Floats()
		p0, err3 := params[name].Floats()
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatal(err1, err2, err3)
		}
		var diff, moved float64
		for i := range p {
			diff = math.Max(diff, math.Abs(float64(p[i]-q[i])))
			moved = math.Max(moved, math.Abs(float64(q[i]-p0[i])))
		}
		if diff > 1e-3*moved {
			t.Errorf("%s: the params differ by %g after five steps that moved them by %g", name, diff, moved)
		}
	}
}
