package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestQuantizedFuse: LoRA beside DequantizeLinear weights trains like any
// other (the base stays int8/uint8), and fusing either re-quantizes with
// the weights' own scales (same graph, error within half a quantization
// step per weight) or writes exact float weights.
func TestQuantizedFuse(t *testing.T) {
	for _, tc := range []struct{ model, op, requant string }{
		{"quantized_mlp", "DequantizeLinear", "re-quantized to int8"},
		{"nbits_mlp", "MatMulNBits", "re-quantized to 4 bits"},
	} {
		t.Run(tc.model, func(t *testing.T) { quantizedFuse(t, tc.model, tc.op, tc.requant) })
	}
}

func quantizedFuse(t *testing.T, model, op, requantMsg string) {
	e := env(t)
	base := copyModel(t, "../../testdata/models/"+model+".onnx")
	dir := filepath.Dir(base)
	injected := filepath.Join(dir, "q.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "2", "-o", injected)
	ad := filepath.Join(dir, "q.lora.adapter")
	randomizeAdapter(t, ad, 4)
	ref := filepath.Join(dir, "ref.onnx")
	buildUnfused(t, base, ad, ref)

	exact := filepath.Join(dir, "float.onnx")
	mustLoracc(t, "fuse", injected, "--adapter", ad, "--quantized", "float", "-o", exact)
	res, err := compareModels(e, ref, exact, "cpu", 8)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Errorf("float fuse differs from unfused: %s", res)
	}
	if strings.Contains(opHistogram(t, exact), op) {
		t.Errorf("float fuse kept a %s", op)
	}

	requant := filepath.Join(dir, "requant.onnx")
	var out, errb bytesBuffer
	if err := run([]string{"loracc", "fuse", injected, "--adapter", ad, "-o", requant}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(errb.b), requantMsg) || !strings.Contains(string(errb.b), "max abs error") {
		t.Errorf("no re-quantization report:\n%s", errb.b)
	}
	if got, want := opHistogram(t, requant), opHistogram(t, base); got != want {
		t.Errorf("re-quantized graph ops %s, base %s", got, want)
	}
	res, err = compareModels(e, ref, requant, "cpu", 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("re-quantized vs unfused: %s", res)
	// Re-quantizing rounds every weight to its grid (and clips at the
	// code range): a few percent at 8 bits, more at 4 with this random,
	// large adapter. --quantized float is the exact path.
	limit := 0.05
	if model == "nbits_mlp" {
		limit = 0.15
	}
	if res.Rel() > limit {
		t.Errorf("re-quantized model is far from the unfused one: %s", res)
	}
	moved, _ := compareModels(e, base, requant, "cpu", 8)
	if moved.MaxAbs == 0 {
		t.Error("re-quantized weights did not change")
	}

	// Training: the adapter learns while the base stays quantized.
	nIn, nOut := 16, 4
	if model == "nbits_mlp" {
		nIn, nOut = 32, 8
	}
	var lines []string
	rng := rand.New(rand.NewPCG(2, 2))
	for range 64 {
		x := make([]float64, nIn)
		y := make([]float64, nOut)
		for i := range x {
			x[i] = rng.NormFloat64()
			y[i%nOut] += 0.1 * x[i]
		}
		b, _ := json.Marshal(map[string][]float64{"x": x, "labels": y})
		lines = append(lines, string(b))
	}
	data := filepath.Join(dir, "d.jsonl")
	os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	runDir := filepath.Join(dir, "run")
	mustLoracc(t, "train", injected, "--data", data, "--loss", "mse", "--logits", "y", "--max-steps", "100", "--lr", "1e-2", "--device", "cpu", "--out", runDir)
	col := lossValues(t, runDir)
	first, last := col[0], col[len(col)-1]
	if last > first/2 {
		t.Errorf("training beside quantized weights: loss %.4g → %.4g", first, last)
	}
}
