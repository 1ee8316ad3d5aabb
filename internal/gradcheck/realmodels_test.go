package gradcheck

import (
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/runtime"
)

// TestRealModels differentiates the tiny GPT-2 and BERT exports with LoRA
// injected on every target: loss = Σ logits·r, gradients for every
// lora_A/lora_B, checked along a random direction against central
// differences. The models are float32, so the step is 1e-2 and the
// tolerance 1e-2 relative. B starts random instead of zero so that the
// A gradients are not trivially zero.
func TestRealModels(t *testing.T) {
	for _, strip := range []bool{false, true} {
		testRealModels(t, strip)
	}
}

// testRealModels runs the check; strip drops the exporter's value_info
// types and shapes first, so ranks and dtypes come from the inferer alone.
func testRealModels(t *testing.T, strip bool) {
	env := openEnv(t)
	const batch, seq = 2, 5
	for _, tc := range []struct {
		file  string
		feeds func(rng *rand.Rand) map[string]runtime.Tensor
	}{
		{"gpt2_tiny.onnx", func(rng *rand.Rand) map[string]runtime.Tensor {
			return map[string]runtime.Tensor{"input_ids": runtime.Int64Tensor([]int64{batch, seq}, randInts(rng, batch*seq, 256))}
		}},
		{"bert_tiny.onnx", func(rng *rand.Rand) map[string]runtime.Tensor {
			mask := []int64{1, 1, 1, 1, 1, 1, 1, 1, 0, 0} // the second sequence is padded
			return map[string]runtime.Tensor{
				"input_ids":      runtime.Int64Tensor([]int64{batch, seq}, randInts(rng, batch*seq, 256)),
				"attention_mask": runtime.Int64Tensor([]int64{batch, seq}, mask),
			}
		}},
	} {
		name := tc.file
		if strip {
			name += " without value_info"
		}
		t.Run(name, func(t *testing.T) {
			m, err := graph.Load(filepath.Join("..", "..", "testdata", "models", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if strip {
				for _, n := range m.Graph.Nodes {
					for _, o := range n.Outputs() {
						if o != nil && !o.IsGraphOutput() {
							o.Type = nil
						}
					}
				}
				m.Graph.ValueInfo = nil
			}
			// BERT's classifier has 3 outputs, too few for rank 4.
			sel := lora.Selector{Exclude: []*regexp.Regexp{regexp.MustCompile(`^classifier$`)}}
			ctx := &rewrite.Context{Lora: lora.Options{Selector: sel, Config: adapter.NewConfig(4, 8), Init: lora.Init{Method: "gaussian"}, AdapterInputs: true}, Verify: true}
			// params turns the adapter's optional inputs into required
			// ones (no default initializer), which the checker feeds.
			if err := rewrite.Run(m, ctx, "inject", "params"); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			feeds := tc.feeds(rng)
			var params []*graph.Value
			for _, in := range m.Graph.Inputs {
				if !strings.HasSuffix(in.Name, ".lora_A") && !strings.HasSuffix(in.Name, ".lora_B") {
					continue
				}
				params = append(params, in)
				shape := make([]int64, len(in.Type.Shape))
				for i, d := range in.Type.Shape {
					shape[i] = d.Value
				}
				x := make([]float64, count(shape))
				for i := range x {
					x[i] = (2*rng.Float64() - 1) / 8
				}
				feeds[in.Name] = tensor(graph.Float, shape, x)
			}
			if len(params) == 0 {
				t.Fatal("inject added no adapter inputs")
			}
			var logits *graph.Value
			for _, o := range m.Graph.Outputs {
				if o.Name == "logits" {
					logits = o
				}
			}
			res, err := CheckModel(env, Model{M: m, Y: logits, Feeds: feeds, Params: params, Seed: 3}, t.TempDir())
			if err != nil {
				t.Fatalf("%v", err)
			}
			t.Logf("%d adapter tensors; analytic %.8g, numeric %.8g, relative error %.3g", len(params), res.Analytic, res.Numeric, res.RelErr)
			if len(res.Dead) > 0 {
				t.Errorf("backward nodes nothing reads: %v", res.Dead)
			}
			if !(res.RelErr <= 1e-2) { // NaN fails too
				t.Errorf("relative error %.3g > 1e-2", res.RelErr)
			}
		})
	}
}

func randInts(rng *rand.Rand, n int, below int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = rng.Int64N(below)
	}
	return out
}
