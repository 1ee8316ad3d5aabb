package main

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestQuantizedFuse: LoRA beside DequantizeLinear weights trains like any
// other (the base stays int8/uint8), and fusing either re-quantizes with
// the weights' own scales (same graph, error within half a quantization
// step per weight) or writes exact float weights.
func TestQuantizedFuse(t *testing.T) {
	e := env(t)
	base := copyModel(t, "../../testdata/models/quantized_mlp.onnx")
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
	if strings.Contains(opHistogram(t, exact), "DequantizeLinear") {
		t.Error("float fuse kept a DequantizeLinear")
	}

	requant := filepath.Join(dir, "requant.onnx")
	var out, errb bytesBuffer
	if err := run([]string{"loracc", "fuse", injected, "--adapter", ad, "-o", requant}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(errb.b), "re-quantized to int8") || !strings.Contains(string(errb.b), "max abs error") {
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
	if res.Rel() > 0.05 {
		t.Errorf("re-quantized model is far from the unfused one: %s", res)
	}
	moved, _ := compareModels(e, base, requant, "cpu", 8)
	if moved.MaxAbs == 0 {
		t.Error("re-quantized weights did not change")
	}

	// Training: the adapter learns while the base stays quantized.
	var lines []string
	rng := rand.New(rand.NewPCG(2, 2))
	for range 64 {
		x := make([]float64, 16)
		y := make([]float64, 4)
		for i := range x {
			x[i] = rng.NormFloat64()
			y[i%4] += 0.1 * x[i]
		}
		b, _ := json.Marshal(map[string][]float64{"x": x, "labels": y})
		lines = append(lines, string(b))
	}
	data := filepath.Join(dir, "d.jsonl")
	os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	runDir := filepath.Join(dir, "run")
	mustLoracc(t, "train", injected, "--data", data, "--loss", "mse", "--logits", "y", "--max-steps", "100", "--lr", "1e-2", "--device", "cpu", "--out", runDir)
	col := lossColumn(t, runDir)
	first, _ := strconv.ParseFloat(col[0][strings.Index(col[0], ":")+1:], 64)
	last, _ := strconv.ParseFloat(col[len(col)-1][strings.Index(col[len(col)-1], ":")+1:], 64)
	if last > first/2 {
		t.Errorf("training beside quantized weights: loss %.4g → %.4g", first, last)
	}
}
