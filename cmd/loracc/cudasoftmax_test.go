package main

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/testmodels"
)

// attnLlama writes testmodels' Llama with the given layers, injected at
// rank 4 on q/k/v/o, and returns the injected model and its config.
func attnLlama(t *testing.T, dir string, layers int) (string, testmodels.LlamaConfig) {
	t.Helper()
	cfg := testmodels.DefaultLlama()
	cfg.Layers = layers
	m, err := testmodels.Llama(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "llama.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--init", "gaussian", "--seed", "1", "--target", `self_attn\.[qkvo]_proj$`, "-o", lora)
	return lora, cfg
}

// TestSoftmaxCast: compiled for CUDA in bf16 with --recompute attention,
// each layer's forward Softmax runs in bfloat16 (softmax-cast: nothing but
// P·V reads its probabilities) while the backward's recomputed one stays
// float32; without recompute the forward's probabilities feed the
// backward and stay float32; --disable-rewrite softmax-cast keeps all.
func TestSoftmaxCast(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 3)
	softmaxes := func(name string, extra ...string) (low, f32 int) {
		out := filepath.Join(dir, name)
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--compute-dtype", "bf16", "--provider", "cuda",
			"--static", "batch_size=2,sequence_length=16", "-o", out}, extra...)...)
		m, err := graph.Load(filepath.Join(out, "train.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		inf := infer.New()
		for _, n := range m.Graph.Nodes {
			if n.Op != "Softmax" {
				continue
			}
			switch inf.DType(n.Output(0)) {
			case graph.BFloat16:
				low++
			case graph.Float:
				f32++
			}
		}
		return low, f32
	}
	for _, tc := range []struct {
		name          string
		extra         []string
		wantLow, want int
	}{
		{"recompute", []string{"--recompute", "attention"}, cfg.Layers, cfg.Layers},
		{"plain", nil, 0, cfg.Layers},
		{"disabled", []string{"--recompute", "attention", "--disable-rewrite", "softmax-cast"}, 0, 2 * cfg.Layers},
	} {
		if low, f32 := softmaxes(tc.name, tc.extra...); low != tc.wantLow || f32 != tc.want {
			t.Errorf("%s: %d bfloat16 and %d float32 Softmax nodes, want %d and %d", tc.name, low, f32, tc.wantLow, tc.want)
		}
	}
}

// TestCUDAAttentionTraffic: on the GPU, the bf16 step with --recompute
// attention trains like the one without softmax-cast and cast-row-sums
// (the forward Softmax in bfloat16, the row sums from the attention
// output): the first step's loss within one bfloat16 rounding of the
// probabilities (2e-3 relative), the next nine within 1e-2, bf16's noise
// on a tiny model at lr 1e-2.
func TestCUDAAttentionTraffic(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 2)
	data := precisionData(t, dir, 16, 32, int64(cfg.Vocab))
	cols := map[string][]float64{}
	for name, disable := range map[string]string{"both": "", "neither": "softmax-cast,cast-row-sums"} {
		run := filepath.Join(dir, name)
		args := []string{"train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "10", "--batch-size", "4",
			"--lr", "1e-2", "--device", "cuda", "--static", "--compute-dtype", "bf16", "--recompute", "attention", "--save-every", "0", "--out", run}
		if disable != "" {
			args = append(args, "--disable-rewrite", disable)
		}
		mustLoracc(t, args...)
		cols[name] = lossValues(t, run)
	}
	a, b := cols["both"], cols["neither"]
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("loss columns of %d and %d steps", len(a), len(b))
	}
	for i := range a {
		tol := 1e-2
		if i == 0 {
			tol = 2e-3
		}
		if math.Abs(a[i]-b[i]) > tol*math.Abs(b[i]) {
			t.Errorf("step %d: loss %v with the rewrites, %v without (tolerance %g)", i+1, a[i], b[i], tol)
		}
	}
	t.Log(fmt.Sprint("losses with: ", a, "; without: ", b))
}
