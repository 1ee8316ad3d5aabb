package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// torchRef is testdata/ref/<model>_ref.json, written by
// testdata/torch/make_refs.py on the GPU machine.
type torchRef struct {
	Loss      float64   `json:"loss"`
	Losses    []float64 `json:"losses"`
	GradNorms []float64 `json:"grad_norms"`
	Optimizer struct {
		LR          float64   `json:"lr"`
		Betas       []float64 `json:"betas"`
		Eps         float64   `json:"eps"`
		WeightDecay float64   `json:"weight_decay"`
	} `json:"optimizer"`
}

// loadBatch reads <model>_batch.json: name → nested int lists.
func loadBatch(t *testing.T, path string) map[string]runtime.Tensor {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	out := map[string]runtime.Tensor{}
	for name, v := range raw {
		var shape []int64
		var flat []int64
		var walk func(x any, depth int)
		walk = func(x any, depth int) {
			switch x := x.(type) {
			case []any:
				if len(shape) == depth {
					shape = append(shape, int64(len(x)))
				}
				for _, e := range x {
					walk(e, depth+1)
				}
			case float64:
				flat = append(flat, int64(x))
			}
		}
		walk(v, 0)
		out[name] = runtime.Int64Tensor(shape, flat)
	}
	return out
}

// trainer runs train.onnx steps, feeding each step's updated params and
// state back, as `loracc train` does.
type trainer struct {
	sess    *runtime.Session
	io      GraphIO
	feeds   map[string]runtime.Tensor
	outputs []string
}

func newTrainer(t testing.TB, e *runtime.Env, dir string, io GraphIO, batch map[string]runtime.Tensor, params map[string]runtime.Tensor) *trainer {
	return newTrainerOn(t, e, dir, io, batch, params, runtime.SessionOptions{})
}

func newTrainerOn(t testing.TB, e *runtime.Env, dir string, io GraphIO, batch map[string]runtime.Tensor, params map[string]runtime.Tensor, opts runtime.SessionOptions) *trainer {
	t.Helper()
	s, err := e.NewSession(filepath.Join(dir, "train.onnx"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tr := &trainer{sess: s, io: io, feeds: map[string]runtime.Tensor{}}
	for _, in := range io.Inputs {
		switch in.Role {
		case trainio.RoleBatch, trainio.RoleLabel:
			v, ok := batch[in.Name]
			if !ok {
				t.Fatalf("batch has no %q", in.Name)
			}
			tr.feeds[in.Name] = v
		case trainio.RoleParam:
			tr.feeds[in.Name] = params[in.Name]
		case trainio.RoleState:
			shape := make([]int64, len(in.Shape))
			for i, d := range in.Shape {
				shape[i] = d.Size
			}
			n, err := graph.NumElements(shape)
			if err != nil || in.DType != "float32" {
				t.Fatalf("state %q: %s %v (%v)", in.Name, in.DType, shape, err)
			}
			tr.feeds[in.Name] = runtime.Tensor{DType: graph.Float, Shape: shape, Data: make([]byte, 4*n)}
		}
	}
	for _, o := range io.Outputs {
		tr.outputs = append(tr.outputs, o.Name)
	}
	return tr
}

// step runs one step and returns the outputs by role name ("loss",
// "grad_norm") and by output name.
func (tr *trainer) step(t testing.TB, n int, lr float64) map[string]runtime.Tensor {
	t.Helper()
	tr.feeds["lr"] = runtime.FloatTensor(nil, []float32{float32(lr)})
	tr.feeds["step"] = runtime.FloatTensor(nil, []float32{float32(n)})
	feeds := map[string]runtime.Tensor{}
	for _, in := range tr.io.Inputs {
		feeds[in.Name] = tr.feeds[in.Name]
	}
	out, err := tr.sess.Run(feeds, tr.outputs)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range tr.io.Outputs {
		if o.Replaces != "" {
			tr.feeds[o.Replaces] = out[o.Name]
		}
	}
	return out
}

func scalarOf(t testing.TB, v runtime.Tensor) float64 {
	f, err := v.Floats()
	if err != nil || len(f) != 1 {
		t.Fatalf("not a scalar: %v %v", f, err)
	}
	return float64(f[0])
}

// TestTrainMatchesPyTorch compiles the training graph of the tiny GPT-2
// and BERT exports with the PEFT adapter PyTorch started from and checks
// loss, every adapter gradient and 20 AdamW steps against PyTorch + PEFT
// (testdata/ref, made by testdata/torch/make_refs.py).
func TestTrainMatchesPyTorch(t *testing.T) {
	e := env(t)
	for _, tc := range []struct{ model, loss string }{{"gpt2_tiny", "lm"}, {"bert_tiny", "ce"}} {
		t.Run(tc.model, func(t *testing.T) {
			ref := readRef(t, tc.model)
			_, out, io, params, a := refTrainSetup(t, tc.model, "--loss", tc.loss, "--labels", "labels",
				"--weight-decay", fmt.Sprint(ref.Optimizer.WeightDecay), "--beta1", fmt.Sprint(ref.Optimizer.Betas[0]),
				"--beta2", fmt.Sprint(ref.Optimizer.Betas[1]), "--eps", fmt.Sprint(ref.Optimizer.Eps), "--emit-grads")
			batch := loadBatch(t, filepath.Join("../../testdata/ref", tc.model+"_batch.json"))
			tr := newTrainer(t, e, out, io.Train, batch, params)
			grads, err := adapter.ReadSafetensors(filepath.Join("../../testdata/ref", tc.model+"_grads.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			for step := 1; step <= len(ref.Losses); step++ {
				res := tr.step(t, step, ref.Optimizer.LR)
				loss := scalarOf(t, res["loss"])
				if rel := math.Abs(loss-ref.Losses[step-1]) / math.Abs(ref.Losses[step-1]); rel > 1e-4 {
					t.Errorf("step %d: loss %.7f, PyTorch %.7f (rel %.2g)", step, loss, ref.Losses[step-1], rel)
				}
				norm := scalarOf(t, res["grad_norm"])
				if rel := math.Abs(norm-ref.GradNorms[step-1]) / ref.GradNorms[step-1]; rel > 1e-4 {
					t.Errorf("step %d: grad norm %.7f, PyTorch %.7f (rel %.2g)", step, norm, ref.GradNorms[step-1], rel)
				}
				if step != 1 {
					continue
				}
				for _, l := range a.Layers {
					for _, part := range []struct {
						suffix, key  string
						rows, cols   int
						transposeRef bool
					}{{".lora_A", ".lora_A.weight", l.In, l.Rank, true}, {".lora_B", ".lora_B.weight", l.Rank, l.Out, true}} {
						got, err := res[l.Name+part.suffix+".grad"].Floats()
						if err != nil {
							t.Fatal(err)
						}
						rt := grads.Tensor("base_model.model." + l.Name + part.key)
						if rt == nil {
							t.Fatalf("reference has no gradient for %s%s", l.Name, part.key)
						}
						rv, err := rt.Floats()
						if err != nil {
							t.Fatal(err)
						}
						want := adapter.Transpose(rv, part.cols, part.rows) // PEFT stores the transpose of ours
						if rel := relDiff(got, want); rel > 1e-4 {
							t.Errorf("gradient of %s%s differs from PyTorch by %.2g relative", l.Name, part.suffix, rel)
						}
					}
				}
			}
		})
	}
}

func readRef(t *testing.T, model string) torchRef {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("../../testdata/ref", model+"_ref.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r torchRef
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// relDiff is max |a−b| over max |b|.
func relDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var diff, scale float64
	for i := range a {
		diff = math.Max(diff, math.Abs(float64(a[i])-float64(b[i])))
		scale = math.Max(scale, math.Abs(float64(b[i])))
	}
	return diff / math.Max(scale, 1e-12)
}
