package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestCUDAComputeDType trains the tiny GPT-2 and Llama on the GPU in
// float32, bfloat16 and float16 (--compute-dtype, static captured steps)
// from the same adapter and data: the 16-bit loss curves stay within 2e-2
// relative of the float32 one over 30 steps (bfloat16 keeps 8 significant
// bits, 4e-3 relative per rounding, carried by AdamW's steps; the CPU's
// float16 measured 3.8e-3) and fall; with fp16 the loss scale stays at
// its start unless a step overflowed. Each run's arena peak is logged
// beside the float32 one.
func TestCUDAComputeDType(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	for name, mod := range precisionModels(t) {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			data := precisionData(t, dir, 16, 24, mod.vocab)
			lora := filepath.Join(dir, "m.lora.onnx")
			mustLoracc(t, "inject", mod.path, "--rank", "4", "--init", "gaussian", "--seed", "3", "-o", lora)
			losses := map[string][]float64{}
			for _, dt := range []string{"fp32", "bf16", "fp16"} {
				run := filepath.Join(dir, "run_"+dt)
				mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "30", "--batch-size", "4",
					"--lr", "1e-2", "--device", "cuda", "--static", "--save-every", "0", "--compute-dtype", dt, "--out", run)
				losses[dt] = lossValues(t, run)
				if raw, err := os.ReadFile(filepath.Join(run, "memory.json")); err == nil {
					var m map[string]any
					if json.Unmarshal(raw, &m) == nil {
						t.Logf("%s %s: memory.json %v", name, dt, m)
					}
				}
			}
			ref := losses["fp32"]
			for _, dt := range []string{"bf16", "fp16"} {
				b := losses[dt]
				worst := 0.0
				for i := range ref {
					if i < len(b) && !math.IsNaN(b[i]) {
						worst = math.Max(worst, math.Abs(ref[i]-b[i])/math.Abs(ref[i]))
					}
				}
				t.Logf("%s %s vs fp32: at most %.3g relative (%.4f → %.4f)", name, dt, worst, b[0], b[len(b)-1])
				if len(b) != 30 || !(worst <= 2e-2) {
					t.Errorf("%s: %s and fp32 loss curves differ by %.3g (tolerance 2e-2)\nfp32 %v\n%s %v", name, dt, worst, ref, dt, b)
				}
				if b[len(b)-1] >= b[0] {
					t.Errorf("%s: the %s loss did not fall: %v → %v", name, dt, b[0], b[len(b)-1])
				}
			}
		})
	}
}

// TestCUDARecomputeAndMemPattern: on the GPU, --recompute attention keeps
// the loss column of the plain static step within TF32's noise (1e-4
// relative: the recomputed product is the same product) and
// --mem-pattern off too; every run's arena statistics are logged, the
// numbers the memory issue reads.
func TestCUDARecomputeAndMemPattern(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	model := copyModel(t, "../../testdata/models/gpt2_tiny.onnx")
	data := precisionData(t, dir, 16, 32, 256)
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", model, "--rank", "8", "--init", "gaussian", "--seed", "1", "-o", lora)
	cols := map[string][]float64{}
	for name, extra := range map[string][]string{
		"plain":         nil,
		"recompute":     {"--recompute", "attention"},
		"recompute-all": {"--recompute", "attention,activations"},
		"nomp":          {"--mem-pattern", "off"},
	} {
		run := filepath.Join(dir, name)
		args := append([]string{"train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "20", "--batch-size", "8",
			"--lr", "1e-2", "--device", "cuda", "--static", "--save-every", "0", "--out", run}, extra...)
		mustLoracc(t, args...)
		cols[name] = lossValues(t, run)
		if raw, err := os.ReadFile(filepath.Join(run, "memory.json")); err == nil {
			t.Logf("%s: memory.json %s", name, raw)
		}
	}
	for _, name := range []string{"recompute", "recompute-all", "nomp"} {
		a, b := cols["plain"], cols[name]
		for i := range a {
			if i >= len(b) || math.Abs(a[i]-b[i]) > 1e-4*math.Abs(a[i]) {
				t.Errorf("%s differs from the plain step at step %d: %v vs %v", name, i+1, b, a)
				break
			}
		}
	}
}
