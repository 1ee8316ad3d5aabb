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
// float32 and int4 weights, and int4 with the embedding tied to the
// lm_head as GatherBlockQuantized (positions past a row's length
// excepted: the genai form's attention does not define them, see
// trainstep/contrib.go).
func TestGenaiTwinUnderORT(t *testing.T) {
	env := openEnv(t)
	for _, c := range []struct{ int4, quantEmbed bool }{{false, false}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("int4=%v,quant-embed=%v", c.int4, c.quantEmbed), func(t *testing.T) {
			o := TinyGenai()
			o.Int4, o.QuantEmbed = c.int4, c.quantEmbed
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
					feeds[fmt.Sprintf("past_key_values.%d.%s", l, kv)] = runtime.FloatTensor([]int64{b, o.KVHeads, 0, o.head()}, nil)
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
				f, err := out["logits"].Floats()
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
			if rel := math.Sqrt(num / den); !(rel <= 1e-5) {
				t.Errorf("genai vs standard logits: ‖Δ‖/‖ref‖ = %.3g", rel)
			}
		})
	}
}
