package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/runtime"
)

// flatten turns nested JSON number lists into float64s.
func flatten(v any, out []float64) []float64 {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			out = flatten(e, out)
		}
	case float64:
		out = append(out, v)
	}
	return out
}

// TestFuseMatchesPEFTMerged: fusing the adapter PyTorch + PEFT saved into
// the ONNX export gives the logits of PEFT's merge_and_unload model
// (testdata/ref/<model>_merged_logits.json, made by make_refs.py) to 1e-4.
func TestFuseMatchesPEFTMerged(t *testing.T) {
	e := env(t)
	for _, model := range []string{"gpt2_tiny", "bert_tiny"} {
		t.Run(model, func(t *testing.T) {
			fused := filepath.Join(t.TempDir(), model+".fused.onnx")
			mustLoracc(t, "fuse", filepath.Join("../../testdata/models", model+".onnx"),
				"--adapter", filepath.Join("../../testdata/ref", model+"_lora_init"), "-o", fused)
			data, err := os.ReadFile(filepath.Join("../../testdata/ref", model+"_merged_logits.json"))
			if err != nil {
				t.Fatal(err)
			}
			var ref map[string]any
			if err := json.Unmarshal(data, &ref); err != nil {
				t.Fatal(err)
			}
			batch := loadBatch(t, filepath.Join("../../testdata/ref", model+"_batch.json"))
			delete(batch, "labels")
			check := func(path, key string) {
				s, err := e.NewSession(path, runtime.SessionOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				out, err := s.Run(batch, []string{"logits"})
				if err != nil {
					t.Fatal(err)
				}
				got, err := out["logits"].Floats()
				if err != nil {
					t.Fatal(err)
				}
				want := flatten(ref[key], nil)
				if len(got) != len(want) {
					t.Fatalf("%s: %d logits, reference %d", key, len(got), len(want))
				}
				worst := 0.0
				for i := range got {
					worst = math.Max(worst, math.Abs(float64(got[i])-want[i]))
				}
				t.Logf("%s vs PyTorch %s: max abs diff %.3g", filepath.Base(path), key, worst)
				if worst > 1e-4 {
					t.Errorf("%s differs from PyTorch's %s logits by %.3g (> 1e-4)", filepath.Base(path), key, worst)
				}
			}
			check(filepath.Join("../../testdata/models", model+".onnx"), "base")
			check(fused, "merged")
		})
	}
}
