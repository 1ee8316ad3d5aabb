package main

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// TestSoftmaxCast: compiled for CUDA in bf16, every Softmax runs in
// bfloat16 by default (softmax-bf16), the forward's and the one
// --recompute attention adds. With the float32 softmax (softmax-bf16 left
// out) and --recompute attention, each layer's forward Softmax still runs
// in bfloat16 (softmax-cast: nothing but P·V reads its probabilities)
// while the backward's recomputed one stays float32; without recompute
// the forward's probabilities feed the backward and stay float32;
// --disable-rewrite softmax-cast keeps all. Either way the softmax
// gradient's subtraction is folded into its bf16 GEMM (row-sub-fold)
// unless disabled.
func TestSoftmaxCast(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 3)
	const seq = 24 // dQ and dK ([.., T, 8] each) smaller than dS ([.., T, T]): the scale moves
	softmaxes := func(name string, extra ...string) (low, f32, subs int) {
		out := filepath.Join(dir, name)
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--compute-dtype", "bf16", "--provider", "cuda",
			"--static", "batch_size=2,sequence_length=24", "-o", out}, extra...)...)
		train := filepath.Join(out, "train.onnx")
		softmaxIn := func(dt graph.DataType) func(*graph.Node, *infer.Inferer) bool {
			return func(n *graph.Node, inf *infer.Inferer) bool { return n.Op == "Softmax" && inf.DType(n.Output(0)) == dt }
		}
		subs = countNodes(t, train, func(n *graph.Node, inf *infer.Inferer) bool {
			return n.Op == "Sub" && squareDims(inf, n.Output(0), seq)
		})
		return countNodes(t, train, softmaxIn(graph.BFloat16)), countNodes(t, train, softmaxIn(graph.Float)), subs
	}
	for _, tc := range []struct {
		name                   string
		extra                  []string
		wantLow, want, wantSub int
	}{
		// the default in bf16: every Softmax in bfloat16 (softmax-bf16)
		{"bf16-recompute", []string{"--recompute", "attention"}, 2 * cfg.Layers, 0, 0},
		{"bf16-plain", nil, cfg.Layers, 0, 0},
		{"bf16-nofold", []string{"--recompute", "attention", "--disable-rewrite", "row-sub-fold"}, 2 * cfg.Layers, 0, cfg.Layers},
		// the float32 softmax (softmax-bf16 left out)
		{"recompute", []string{"--recompute", "attention", "--disable-rewrite", "softmax-bf16"}, cfg.Layers, cfg.Layers, 0},
		{"plain", []string{"--disable-rewrite", "softmax-bf16"}, 0, cfg.Layers, 0},
		{"disabled", []string{"--recompute", "attention", "--disable-rewrite", "softmax-bf16,softmax-cast"}, 0, 2 * cfg.Layers, 0},
		{"nofold", []string{"--recompute", "attention", "--disable-rewrite", "softmax-bf16,row-sub-fold"}, cfg.Layers, cfg.Layers, cfg.Layers},
	} {
		if low, f32, subs := softmaxes(tc.name, tc.extra...); low != tc.wantLow || f32 != tc.want || subs != tc.wantSub {
			t.Errorf("%s: %d bfloat16 and %d float32 Softmax nodes, %d Subs over [.., T, T]; want %d, %d and %d", tc.name, low, f32, subs, tc.wantLow, tc.want, tc.wantSub)
		}
	}
}

// TestCUDAAttentionTraffic: on the GPU, the bf16 step with --recompute
// attention trains like the one without softmax-bf16, softmax-cast,
// cast-row-sums, row-sub-fold, scale-past-matmul and expand-broadcasts
// (the softmax in bfloat16, the row sums from the attention output, the
// softmax gradient's subtraction in its GEMM, its scale on dQ and dK,
// the mask expanded): the first step's loss within one bfloat16 rounding of the
// probabilities (2e-3 relative), the next nine within 1e-2, bf16's noise
// on a tiny model at lr 1e-2.
func TestCUDAAttentionTraffic(t *testing.T) {
	e := env(t)
	cudaOrSkip(t, e)
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 2)
	data := precisionData(t, dir, 16, 32, int64(cfg.Vocab))
	cols := map[string][]float64{}
	for name, disable := range map[string]string{"both": "", "neither": "softmax-bf16,softmax-cast,cast-row-sums,row-sub-fold,scale-past-matmul,expand-broadcasts"} {
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

// TestCUDAFusionsFP16OnCPU: the graph compiled for CUDA in fp16 with
// --recompute attention (softmax-cast, the row-sum fold through
// autocast's Cast, the scale moved past dQ's and dK's products and the
// shared broadcasts expanded applied; the Llama masks with Where, so no BiasSoftmax) runs on ONNX
// Runtime's CPU provider too, and five SGD steps of it give the losses
// of the same graph without those rewrites to fp16 precision (1e-3
// relative), the params to 2 % of their update (SGD, so the update is
// the gradient's: AdamW's normalisation would magnify the noise of
// near-zero gradients). The same with the softmax in fp16 (softmax-f32
// left out), where the fold runs without casts. The fused graphs have no
// Sub and no scalar Mul over a [.., T, T] tensor in the backward, and
// their mask Where nodes read the mask expanded once (expand-broadcasts).
func TestCUDAFusionsFP16OnCPU(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	lora, _ := attnLlama(t, dir, 2)
	a, err := adapter.Load(strings.TrimSuffix(lora, ".onnx") + ".adapter")
	if err != nil {
		t.Fatal(err)
	}
	params := train.FromAdapter(a)
	export := func(name, disable string) (string, TrainIO) {
		out := filepath.Join(dir, name)
		args := []string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--compute-dtype", "fp16", "--provider", "cuda",
			"--recompute", "attention", "--optimizer", "sgd", "--static", "batch_size=2,sequence_length=24", "-o", out}
		if disable != "" {
			args = append(args, "--disable-rewrite", disable)
		}
		mustLoracc(t, args...)
		return out, readTrainIO(t, out)
	}
	const seq = 24 // dQ and dK ([.., T, 8] each) smaller than dS ([.., T, T]): the scale moves
	for _, tc := range []struct{ name, softmax string }{{"softmax-f32", ""}, {"softmax-fp16", "softmax-f32"}} {
		t.Run(tc.name, func(t *testing.T) {
			join := func(a, b string) string { return strings.Trim(a+","+b, ",") }
			onDir, onIO := export(tc.name+"-fused", tc.softmax)
			offDir, offIO := export(tc.name+"-unfused", join(tc.softmax, "softmax-cast,row-sub-fold,scale-past-matmul,expand-broadcasts"))
			square := countNodes(t, filepath.Join(onDir, "train.onnx"), func(n *graph.Node, inf *infer.Inferer) bool {
				if !strings.HasPrefix(n.Name, "grad/") || !squareDims(inf, n.Output(0), seq) {
					return false
				}
				return n.Op == "Sub" || n.Op == "Mul" && (graph.ConstTensor(n.Input(0)) != nil || graph.ConstTensor(n.Input(1)) != nil)
			})
			if square != 0 {
				t.Errorf("the fused backward has %d Sub or scalar Mul nodes over [.., T, T] tensors, want 0", square)
			}
			// expand-broadcasts: every mask Where reads a condition of its own dims.
			wheres, broadcast := 0, 0
			countNodes(t, filepath.Join(onDir, "train.onnx"), func(n *graph.Node, inf *infer.Inferer) bool {
				if n.Op == "Where" && squareDims(inf, n.Output(0), seq) {
					wheres++
					if !squareDims(inf, n.Input(0), seq) || inf.Info(n.Input(0)).Dims[1] != inf.Info(n.Output(0)).Dims[1] {
						broadcast++
					}
				}
				return false
			})
			if wheres == 0 || broadcast != 0 {
				t.Errorf("%d of the fused graph's %d mask Where nodes broadcast their condition, want 0 of at least 1", broadcast, wheres)
			}
			ids := randomTokens(2, seq, 5)
			ones := make([]int64, 2*seq)
			for i := range ones {
				ones[i] = 1
			}
			batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids, "attention_mask": runtime.Int64Tensor([]int64{2, seq}, ones)}
			x := newTrainer(t, e, onDir, onIO.Train, batch, params)
			y := newTrainer(t, e, offDir, offIO.Train, batch, params)
			for _, tr := range []*trainer{x, y} {
				tr.feeds["loss_scale"] = runtime.FloatTensor(nil, []float32{1}) // fp16's dynamic scale, at 1
			}
			stepsAlike(t, x, y, params, 5, 1e-3, 0.02)
		})
	}
}

// stepsAlike runs steps SGD steps (lr 1e-2) of trainers x and y from the
// same params and fails t unless each step's losses agree within lossTol
// relative and the params at the end within paramTol of y's update.
func stepsAlike(t *testing.T, x, y *trainer, params map[string]runtime.Tensor, steps int, lossTol, paramTol float64) {
	t.Helper()
	for step := 1; step <= steps; step++ {
		p, q := x.step(t, step, 1e-2), y.step(t, step, 1e-2)
		lp, lq := scalarOf(t, p["loss"]), scalarOf(t, q["loss"])
		if math.Abs(lp-lq) > lossTol*math.Abs(lq) {
			t.Errorf("step %d: loss %v, and %v without the rewrite", step, lp, lq)
		}
	}
	for name := range params {
		p, err1 := x.feeds[name].Floats()
		q, err2 := y.feeds[name].Floats()
		p0, err3 := params[name].Floats()
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatal(err1, err2, err3)
		}
		var diff, moved float64
		for i := range p {
			diff = math.Max(diff, math.Abs(float64(p[i]-q[i])))
			moved = math.Max(moved, math.Abs(float64(q[i]-p0[i])))
		}
		if diff > paramTol*moved {
			t.Errorf("%s: the params differ by %g after %d steps that moved them by %g", name, diff, steps, moved)
		}
	}
}
