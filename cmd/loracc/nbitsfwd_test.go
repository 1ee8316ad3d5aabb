package main

import (
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
	stepsAlike(t, x, y, params, 5, 1e-5, 1e-3)
}
