package testmodels

import (
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// TestGenaiTwinUnderORT: the genai-form tiny Llama (GroupQueryAttention,
// SkipSimplifiedLayerNormalization, zero-length past) and its
// standard-ops twin give the same logits on a right-padded batch, for
// float32 and int4 weights, int4 with the embedding tied to the lm_head
// as GatherBlockQuantized, and in float16 (positions past a row's length
// excepted: the genai form's attention does not define them, see
// trainstep/contrib.go).
func TestGenaiTwinUnderORT(t *testing.T) {
	env := openEnv(t)
	for _, tc := range []struct {
		int4, fp16, quantEmbed bool
		tol                    float64
	}{{false, false, false, 1e-5}, {true, false, false, 1e-5}, {true, false, true, 1e-5}, {false, true, false, 1e-3}, {true, true, false, 1e-3}} {
		t.Run(fmt.Sprintf("int4=%v/fp16=%v/quant-embed=%v", tc.int4, tc.fp16, tc.quantEmbed), func(t *testing.T) {
			o := TinyGenai()
			o.Int4, o.FP16, o.QuantEmbed = tc.int4, tc.fp16, tc.quantEmbed
			dir := t.TempDir()
			paths := map[string]string{}
			for name, build := range map[string]func(GenaiOptions) (*graph.Model, error){"genai": GenaiLlama, "standard": GenaiLlamaStandard} {
				m, err := build(o)
				if err != nil {
					t.Fatal(err)
				}
				paths[name] = filepath.Join(dir, name+".onnx")
				if err := graph.Save(m, paths[name], graph.SaveOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			const b, s = 2, 7
			lens := []int{7, 5}
			ids, mask := make([]int64, b*s), make([]int64, b*s)
			for i := range ids {
				ids[i] = int64(i*37+5) % o.Vocab
				if i%s < lens[i/s] {
					mask[i] = 1
				}
			}
			feeds := map[string]runtime.Tensor{"input_ids": runtime.Int64Tensor([]int64{b, s}, ids), "attention_mask": runtime.Int64Tensor([]int64{b, s}, mask)}
			for l := range o.Layers {
				for _, kv := range []string{"key", "value"} {
					feeds[fmt.Sprintf("past_key_values.%d.%s", l, kv)] = runtime.Tensor{DType: o.dtype(), Shape: []int64{b, o.KVHeads, 0, o.head()}}
				}
			}
			run := func(path string) []float32 {
				sess := openSession(t, env, path)
				in := map[string]runtime.Tensor{}
				for _, i := range sess.Inputs() {
					in[i.Name] = feeds[i.Name]
				}
				out, err := sess.Run(in, []string{"logits"})
				if err != nil {
					t.Fatal(err)
				}
				f, err := graph.DecodeFloats(out["logits"].DType, out["logits"].Data)
				if err != nil {
					t.Fatal(err)
				}
				return f
			}
			want, got := run(paths["standard"]), run(paths["genai"])
			var num, den float64
			for i := range want {
				if pos := i / int(o.Vocab) % s; pos >= lens[i/(int(o.Vocab)*s)] {
					continue
				}
				d := float64(got[i] - want[i])
				num, den = num+d*d, den+float64(want[i])*float64(want[i])
			}
			rel := math.Sqrt(num / den)
			t.Logf("genai vs standard logits: ‖Δ‖/‖ref‖ = %.3g", rel)
			if !(rel <= tc.tol) {
				t.Errorf("genai vs standard logits: ‖Δ‖/‖ref‖ = %.3g", rel)
			}
		})
	}
}
