package main

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// TestProducts: pass products rewrites the tiny GPT-2 step's backward at
// 8 × 64 — each of the 8 LoRA A gradients xᵀ·h as (hᵀ·x)ᵀ (narrow-grad),
// each of the 7 needed LoRA input gradients g·Wᵀ + (g·Bᵀ)·Aᵀ as
// g·(W + A·B)ᵀ (lora-dx) — not for --provider cuda, and the rewritten
// step gives the plain one's loss, gradient norm, params and state to
// float32 rounding over five steps.
func TestProducts(t *testing.T) {
	e := env(t)
	lora, dynDir, _, params := gptTrainSetup(t)
	base := filepath.Dir(dynDir)
	type counts struct{ transA, withC, sums int }
	export := func(name string, extra ...string) (string, counts) {
		dir := filepath.Join(base, name)
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=8,seq=64", "-o", dir}, extra...)...)
		m, err := graph.Load(filepath.Join(dir, "train.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		var c counts
		m.Graph.Walk(func(n *graph.Node) {
			switch {
			case n.Op == "Gemm" && n.AttrInt("transA", 0) == 1:
				c.transA++
			case n.Op == "Gemm" && n.NumInputs() == 3:
				c.withC++
			case n.Op == "Sum":
				c.sums++
			}
		})
		return dir, c
	}
	onDir, on := export("products")
	offDir, off := export("plain", "--disable-rewrite", "narrow-grad,lora-dx")
	_, cuda := export("cuda", "--provider", "cuda")
	const targets, inputGrads = 8, 7 // layer 0's c_attn input needs no gradient
	if on.transA != off.transA-targets || on.withC != off.withC+inputGrads || on.sums != off.sums-inputGrads {
		t.Errorf("products: Gemm(transA) %d → %d, Gemm with C %d → %d, Sum %d → %d; want %d fewer, %d more, %d fewer",
			off.transA, on.transA, off.withC, on.withC, off.sums, on.sums, targets, inputGrads, inputGrads)
	}
	if cuda.transA != off.transA || cuda.withC != off.withC {
		t.Errorf("--provider cuda: Gemm(transA) %d, Gemm with C %d; want the plain graph's %d and %d", cuda.transA, cuda.withC, off.transA, off.withC)
	}

	onIO, offIO := readTrainIO(t, onDir), readTrainIO(t, offDir)
	ids := randomTokens(8, 64, 7)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	a := newTrainer(t, e, offDir, offIO.Train, batch, params)
	b := newTrainer(t, e, onDir, onIO.Train, batch, params)
	for step := 1; step <= 5; step++ {
		x, y := a.step(t, step, 1e-2), b.step(t, step, 1e-2)
		for _, o := range offIO.Train.Outputs {
			p, err1 := x[o.Name].Floats()
			q, err2 := y[o.Name].Floats()
			if err1 != nil || err2 != nil || len(p) != len(q) {
				t.Fatalf("step %d, %q: %v %v (%d vs %d values)", step, o.Name, err1, err2, len(p), len(q))
			}
			for i := range p {
				if d := math.Abs(float64(p[i] - q[i])); d > 1e-5*(1+math.Abs(float64(p[i]))) {
					t.Fatalf("step %d, %q[%d]: plain %v, rewritten %v", step, o.Name, i, p[i], q[i])
				}
			}
		}
	}
}
