package main

import (
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// TestCUDATargetFusions: export-train --static --provider cuda rewrites the
// tiny GPT-2's two attention patterns — every mask addition fused into
// its Softmax (com.microsoft BiasSoftmax), every softmax gradient's row
// subtraction folded into its GEMM — and only with --provider cuda. With
// BiasSoftmax left out (the CPU provider has no kernel for it), the
// folded step runs on the CPU and gives the portable graph's loss,
// gradient norm and params to float32 rounding over five steps.
// --disable-rewrite refuses a name it does not know.
func TestCUDATargetFusions(t *testing.T) {
	e := env(t)
	lora, dynDir, io, params := gptTrainSetup(t)
	base := filepath.Dir(dynDir)
	export := func(name string, extra ...string) (string, map[string]int) {
		dir := filepath.Join(base, name)
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,seq=16", "-o", dir}, extra...)...)
		m, err := graph.Load(filepath.Join(dir, "train.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		ops := map[string]int{}
		m.Graph.Walk(func(n *graph.Node) { ops[n.Op]++ })
		return dir, ops
	}
	_, portable := export("portable")
	_, cuda := export("cuda", "--provider", "cuda")
	foldDir, fold := export("fold", "--provider", "cuda", "--disable-rewrite", "bias-softmax")
	const layers = 2 // the tiny GPT-2's blocks
	switch {
	case portable["BiasSoftmax"] != 0:
		t.Errorf("portable graph has %d BiasSoftmax nodes", portable["BiasSoftmax"])
	case cuda["BiasSoftmax"] != layers || cuda["Softmax"] != portable["Softmax"]-layers:
		t.Errorf("--provider cuda: %d BiasSoftmax and %d Softmax nodes (portable %d Softmax), want every attention's fused", cuda["BiasSoftmax"], cuda["Softmax"], portable["Softmax"])
	case fold["BiasSoftmax"] != 0:
		t.Errorf("bias-softmax disabled but %d BiasSoftmax nodes", fold["BiasSoftmax"])
	case fold["Sub"] != portable["Sub"]-layers || fold["Concat"] < portable["Concat"]+2*layers:
		t.Errorf("row-sub-fold: Sub %d → %d, Concat %d → %d; want %d Subs replaced by two Concats each", portable["Sub"], fold["Sub"], portable["Concat"], fold["Concat"], layers)
	}

	statIO := readTrainIO(t, filepath.Join(base, "portable"))
	foldIO := readTrainIO(t, foldDir)
	ids := randomTokens(2, 16, 7)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	a := newTrainer(t, e, filepath.Join(base, "portable"), statIO.Train, batch, params)
	b := newTrainer(t, e, foldDir, foldIO.Train, batch, params)
	for step := 1; step <= 5; step++ {
		x, y := a.step(t, step, 1e-2), b.step(t, step, 1e-2)
		for _, o := range statIO.Train.Outputs {
			p, err1 := x[o.Name].Floats()
			q, err2 := y[o.Name].Floats()
			if err1 != nil || err2 != nil || len(p) != len(q) {
				t.Fatalf("step %d, %q: %v %v (%d vs %d values)", step, o.Name, err1, err2, len(p), len(q))
			}
			for i := range p {
				if d := math.Abs(float64(p[i] - q[i])); d > 1e-5*(1+math.Abs(float64(p[i]))) {
					t.Fatalf("step %d, %q[%d]: portable %v, folded %v", step, o.Name, i, p[i], q[i])
				}
			}
		}
	}
	_ = io

	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--disable-rewrite", "nonesuch", "-o", filepath.Join(base, "x")); err == nil || !strings.Contains(err.Error(), `unknown rewrite "nonesuch"`) {
		t.Errorf("unknown rewrite: %v", err)
	}
	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--provider", "cuda", "-o", filepath.Join(base, "y")); err == nil || !strings.Contains(err.Error(), "needs --static") {
		t.Errorf("--target without --static: %v", err)
	}
}

// TestMemoryReport: export-train --memory-report plans the tiny GPT-2
// step at 8 × 64 (injected at r=8 on every target) and prints its peak of
// live activation bytes and the values live then. The bound holds the
// plan near where it is today (7.5 MiB, in ONNX Runtime's order): a
// change that keeps more for the backward fails here first. Without --static it is refused.
func TestMemoryReport(t *testing.T) {
	env(t)
	dir := t.TempDir()
	lora := filepath.Join(dir, "g.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "8", "--seed", "1", "-o", lora)
	out := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=8,seq=64", "--memory-report", "-o", filepath.Join(dir, "s"))
	m := regexp.MustCompile(`activations peak ([0-9.]+) MiB`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, "largest holders at the peak:") {
		t.Fatalf("no plan in:\n%s", out)
	}
	if peak, _ := strconv.ParseFloat(m[1], 64); peak <= 0 || peak > 8 {
		t.Errorf("planned peak %.1f MiB, want (0, 8]", peak)
	}
	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--memory-report", "-o", filepath.Join(dir, "d")); err == nil || !strings.Contains(err.Error(), "needs --static") {
		t.Errorf("--memory-report without --static: %v", err)
	}
	// --batch-size and --seq-len name the same dims (the first input's).
	bs := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--batch-size", "8", "--seq-len", "64", "--memory-report", "-o", filepath.Join(dir, "b"))
	if strings.ReplaceAll(bs, "/b/", "/s/") != out {
		t.Errorf("--batch-size 8 --seq-len 64 reports\n%s\nbut --static batch=8,seq=64\n%s", bs, out)
	}
}
