package main

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/internal/testmodels"
)

// TestCUDAInt4TrainsLikeCPU: the int4 genai-form Llama (MatMulNBits
// weights, whose backward dequantizes the packed codes while the step
// runs) trains on the GPU as on the CPU: 20 AdamW steps, float32 within
// 1e-3 relative per step (TF32), and bf16 compute within 3e-2 (bf16
// operands carry 8 bits of mantissa, 4e-3 relative each; over a 20-step
// curve on a 2-layer model they stay within a few times that).
func TestCUDAInt4TrainsLikeCPU(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	o := testmodels.TinyGenai()
	o.Int4 = true
	folder := filepath.Join(dir, "genai")
	writeGenaiFolder(t, folder, o)
	data := genaiData(t, dir, o.Vocab)
	lora := filepath.Join(dir, "int4.lora.onnx")
	mustLoracc(t, "inject", folder, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "3", "-o", lora)
	losses := map[string][]float64{}
	for name, extra := range map[string][]string{
		"cpu":       {"--device", "cpu"},
		"cuda":      {"--device", "cuda"},
		"cuda-bf16": {"--device", "cuda", "--compute-dtype", "bf16"},
	} {
		run := filepath.Join(dir, name)
		mustLoracc(t, append([]string{"train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "20", "--batch-size", "4",
			"--lr", "1e-2", "--save-every", "0", "--out", run}, extra...)...)
		losses[name] = lossValues(t, run)
	}
	ref := losses["cpu"]
	for name, tol := range map[string]float64{"cuda": 1e-3, "cuda-bf16": 3e-2} {
		got := losses[name]
		if len(ref) != 20 || len(got) != 20 {
			t.Fatalf("%s: %d and %d loss rows", name, len(ref), len(got))
		}
		for i := range ref {
			if math.Abs(got[i]-ref[i]) > tol*math.Abs(ref[i]) {
				t.Errorf("%s step %d: loss %v, cpu %v (tolerance %g relative)", name, i+1, got[i], ref[i], tol)
				break
			}
		}
	}
}
