package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// TestRecomputeAttention: with --recompute attention (and activations)
// the backward recomputes the attention probabilities (and the GELUs),
// and
//   - training gives the same loss column, gradient norms and adapter,
//     bit for bit (Q + 0·d is Q), on the CPU;
//   - the planned peak of live activations (memplan, --memory-report)
//     falls by the two layers' probabilities of the tiny GPT-2 at 8 × 64
//     ([8, 4, 64, 64] float32, 0.5 MiB each);
//   - in the model ONNX Runtime runs after its own optimizations
//     (SetOptimizedModelFilePath) the copies are still apart and the
//     forward's probabilities feed the forward product alone.
func TestRecomputeAttention(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	model := copyModel(t, "../../testdata/models/gpt2_tiny.onnx")
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", model, "--rank", "8", "--init", "gaussian", "--seed", "1", "-o", lora)
	data := precisionData(t, dir, 16, 32, 256)
	var cols [3][]byte
	var adapters [3][]byte
	for i, r := range []string{"none", "attention", "attention,activations"} {
		run := filepath.Join(dir, "run_"+r)
		mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "12", "--batch-size", "4",
			"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--recompute", r, "--out", run)
		cols[i], adapters[i] = trainedRun(t, run)
	}
	for i := 1; i < 3; i++ {
		if string(cols[0]) != string(cols[i]) {
			t.Errorf("recomputing (%d) changed the loss or gradient norm column:\n%s\nrecomputed:\n%s", i, cols[0], cols[i])
		}
		if string(adapters[0]) != string(adapters[i]) {
			t.Errorf("recomputing (%d) changed the trained adapter", i)
		}
	}
	a, err := adapter.Load(filepath.Join(dir, "m.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	var planned [2]float64
	var peaks, peaksNoPattern [2]int64
	for i, r := range []string{"none", "attention"} {
		out := filepath.Join(dir, "static_"+r)
		rep := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=8,seq=64", "--recompute", r, "--memory-report", "-o", out)
		m := regexp.MustCompile(`activations peak ([0-9.]+) MiB`).FindStringSubmatch(rep)
		if m == nil {
			t.Fatalf("no planned peak in:\n%s", rep)
		}
		planned[i], _ = strconv.ParseFloat(m[1], 64)
		optimized := filepath.Join(dir, "ort_"+r+".onnx")
		ids := randomTokens(8, 64, 1)
		batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
		peaks[i] = arenaPeak(t, e, out, a, batch, false, optimized)
		peaksNoPattern[i] = arenaPeak(t, e, out, a, batch, true, "")
		if r == "attention" {
			checkCopiesKept(t, optimized, 2)
		}
	}
	t.Logf("planned peak of live activations: %.1f MiB kept, %.1f MiB recomputed; ONNX Runtime's CPU arena peak in use: %d and %d bytes (memory pattern off: %d and %d)", planned[0], planned[1], peaks[0], peaks[1], peaksNoPattern[0], peaksNoPattern[1])
	// The plan follows ORT's order but not its memory pattern's packing;
	// ORT's CPU arena has shown the same peak either way on this 2-layer
	// model, which is why the rewrite is not on by default (the GPU
	// measurement decides).
	if !(planned[1] <= planned[0]-0.9) {
		t.Errorf("the planned peak went from %.1f to %.1f MiB, want two layers' probabilities (1 MiB) lower", planned[0], planned[1])
	}
}

// TestRecomputeAttentionLlama measures the same on an 8-layer tiny Llama
// at 8 × 128, where the probabilities ([8, 4, 128, 128], 2 MiB a layer)
// are the largest activations (the chain is found through its backward's
// un-broadcasting Shape reads): the planned peak falls by at least 12 MiB
// and ONNX Runtime's own CPU arena peak (memory pattern off) by at least
// 10%, and recomputing the activations as well lowers it by 3% more.
func TestRecomputeAttentionLlama(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	o := testmodels.TinyGenai()
	o.Layers = 8
	twin, err := testmodels.GenaiLlamaStandard(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "llama.onnx")
	if err := graph.Save(twin, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--init", "gaussian", "--seed", "1", "-o", lora)
	a, err := adapter.Load(filepath.Join(dir, "m.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	batch := llamaBatch(8, 128, o.Vocab)
	var planned [3]float64
	var peaks [3]int64
	for i, r := range []string{"none", "attention", "attention,activations"} {
		out := filepath.Join(dir, "static_"+r)
		rep := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--batch-size", "8", "--seq-len", "128", "--recompute", r, "--memory-report", "-o", out)
		m := regexp.MustCompile(`activations peak ([0-9.]+) MiB`).FindStringSubmatch(rep)
		if m == nil {
			t.Fatalf("no planned peak in:\n%s", rep)
		}
		planned[i], _ = strconv.ParseFloat(m[1], 64)
		optimized := filepath.Join(dir, "ort_"+r+".onnx")
		peaks[i] = arenaPeak(t, e, out, a, batch, true, optimized)
		if r == "attention" {
			checkCopiesKept(t, optimized, int(o.Layers))
		}
	}
	t.Logf("tiny Llama 8×128: planned peak %.1f MiB kept, %.1f MiB recomputing the attention, %.1f MiB and the activations; ORT CPU arena peak (memory pattern off) %d, %d and %d bytes", planned[0], planned[1], planned[2], peaks[0], peaks[1], peaks[2])
	// Measured: planned 42.0 → 28.0 → 22.7 MiB, ORT's arena 58.2 → 47.6 →
	// 42.6 MB (the plan in ORT's order follows ORT's drops: 14.0 and 5.3
	// MiB planned, 10.6 and 5.0 MB measured; in file order it had
	// predicted 0.7 MiB for the activations). With
	// 2 layers ORT's peak did not fall (22.9 → 23.4 MB): one layer's
	// probabilities saved against the recomputed scores and probabilities
	// live in the attention's backward.
	if !(planned[1] <= planned[0]-12) {
		t.Errorf("the planned peak went from %.1f to %.1f MiB, want at least 12 MiB lower (8 layers' probabilities are 16 MiB)", planned[0], planned[1])
	}
	if !(float64(peaks[1]) <= 0.9*float64(peaks[0])) {
		t.Errorf("ORT's CPU arena peak went from %d to %d bytes, want at least 10%% lower", peaks[0], peaks[1])
	}
	// The activations (σ(gate) and gate·σ(gate) of every MLP) too, from
	// gate: one [B, T, I] tensor a layer fewer since SiLU's gradient reads
	// σ and y and not gate (two before): measured 42.2 → 40.2 MB (47.6 →
	// 42.6 with the older gradient).
	if !(float64(peaks[2]) <= 0.97*float64(peaks[1])) {
		t.Errorf("recomputing the activations too left ORT's CPU arena peak at %d bytes (attention only: %d), want at least 3%% lower", peaks[2], peaks[1])
	}
}

// arenaPeak runs the compiled step at dir three times on the CPU and
// returns ONNX Runtime's arena peak of bytes in use (MaxInUse), with its
// memory pattern or without.
func arenaPeak(t *testing.T, e *runtime.Env, dir string, a *adapter.Adapter, batch map[string]runtime.Tensor, noPattern bool, optimized string) int64 {
	t.Helper()
	io := readTrainIO(t, dir)
	feeds := newTrainerOn(t, e, dir, io.Train, batch, train.FromAdapter(a), runtime.SessionOptions{IntraOpThreads: 1}).feeds
	feeds["lr"], feeds["step"] = runtime.FloatTensor(nil, []float32{1e-3}), runtime.FloatTensor(nil, []float32{1})
	s, err := e.NewBoundSession(filepath.Join(dir, "train.onnx"), runtime.SessionOptions{IntraOpThreads: 1, NoMemPattern: noPattern, OptimizedModelPath: optimized})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var names []string
	for _, o := range io.Train.Outputs {
		names = append(names, o.Name)
	}
	for range 3 {
		if _, _, err := s.Run(feeds, nil, names, nil); err != nil {
			t.Fatal(err)
		}
	}
	stats, err := s.MemoryStats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s (memory pattern off %v): %v", dir, noPattern, stats)
	return stats["MaxInUse"]
}

// trainedRun is a finished run's step, loss and grad_norm columns
// (lossAndNorm) and its adapter's weights file.
func trainedRun(t *testing.T, run string) (cols, weights []byte) {
	t.Helper()
	m, err := os.ReadFile(filepath.Join(run, "metrics.csv"))
	if err != nil {
		t.Fatal(err)
	}
	if weights, err = os.ReadFile(filepath.Join(run, "adapter", adapter.WeightsFile)); err != nil {
		t.Fatal(err)
	}
	return lossAndNorm(t, m), weights
}

// lossAndNorm is metrics.csv's step, loss and grad_norm columns.
func lossAndNorm(t *testing.T, csv []byte) []byte {
	t.Helper()
	var out []byte
	for _, line := range strings.Split(string(csv), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 5 {
			continue
		}
		out = append(out, f[0]+","+f[2]+","+f[4]+"\n"...)
	}
	return out
}

// checkCopiesKept fails t unless the model ONNX Runtime runs (saved after
// its optimizations) still has the recomputed probabilities apart from
// the forward's — its common-subexpression elimination did not merge
// them — and the forward's are read by the forward's product alone.
func checkCopiesKept(t *testing.T, path string, layers int) {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	copies, forward := 0, 0
	for _, n := range m.Graph.Nodes {
		if n.Op != "Softmax" {
			continue
		}
		if strings.HasSuffix(n.Output(0).Name, ".recomputed") {
			copies++
			continue
		}
		forward++
		if k := n.Output(0).NumUses(); k != 1 {
			t.Errorf("in ORT's model the forward probabilities %q have %d readers, want the forward product alone", n.Output(0).Name, k)
		}
	}
	if copies != layers || forward != layers {
		t.Errorf("ORT's model has %d forward and %d recomputed Softmax nodes, want %d and %d", forward, copies, layers, layers)
	}
}

// TestRecomputeAttentionAutocast: under --compute-dtype fp16 the scores
// reach the Softmax through autocast's casts and, in the Optimum-form
// Llama, a masking Where, and the P·V gradient reads P cast down; the
// recompute follows both, so the planned peak falls, and training on the
// CPU keeps the same loss column, bit for bit.
func TestRecomputeAttentionAutocast(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 4)
	var planned [2]float64
	for i, r := range []string{"none", "attention"} {
		rep := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--compute-dtype", "fp16", "--recompute", r,
			"--static", "batch_size=4,sequence_length=64", "--memory-report", "-o", filepath.Join(dir, "static_"+r))
		m := regexp.MustCompile(`activations peak ([0-9.]+) MiB`).FindStringSubmatch(rep)
		if m == nil {
			t.Fatalf("no planned peak in:\n%s", rep)
		}
		planned[i], _ = strconv.ParseFloat(m[1], 64)
	}
	if !(planned[1] < planned[0]) {
		t.Errorf("fp16: recomputing the attention left the planned peak at %.2f MiB (%.2f without)", planned[1], planned[0])
	}
	data := precisionData(t, dir, 8, 32, int64(cfg.Vocab))
	var cols [2][]byte
	for i, r := range []string{"none", "attention"} {
		run := filepath.Join(dir, "run_"+r)
		mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "4", "--batch-size", "4",
			"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--compute-dtype", "fp16", "--recompute", r, "--out", run)
		b, err := os.ReadFile(filepath.Join(run, "metrics.csv"))
		if err != nil {
			t.Fatal(err)
		}
		cols[i] = lossAndNorm(t, b)
	}
	if string(cols[0]) != string(cols[1]) {
		t.Errorf("fp16: recomputing changed the loss column:\n%s\nrecomputed:\n%s", cols[0], cols[1])
	}
}

// attnLlama writes testmodels' Llama with the given layers, injected at
// rank 4 on q/k/v/o, and returns the injected model and its config.
func attnLlama(t *testing.T, dir string, layers int) (string, testmodels.LlamaConfig) {
	t.Helper()
	cfg := testmodels.DefaultLlama()
	cfg.Layers = layers
	m, err := testmodels.Llama(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "llama.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--init", "gaussian", "--seed", "1", "--target", `self_attn\.[qkvo]_proj$`, "-o", lora)
	return lora, cfg
}

// TestRecomputeLoss: --recompute loss scores a static batch one sequence
// at a time and recomputes each sequence's log-probabilities in the
// backward. On a tiny Llama whose [tokens, vocab] tensors (8192 words)
// are its largest, and on one with 5003 (a head canonicalize pads to
// aligned columns, lmLogits' Gemm): the loss column is the whole loss's
// within float32 rounding (the chunks' sums are added in another order).
// With 8192 the planned peak falls by at least half, and so does ONNX
// Runtime's own CPU arena peak, by at least a third (memory pattern off).
func TestRecomputeLoss(t *testing.T) {
	e := env(t)
	dir := t.TempDir()
	model := func(vocab int64) (string, string) {
		o := testmodels.TinyGenai()
		o.Vocab = vocab
		twin, err := testmodels.GenaiLlamaStandard(o)
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, fmt.Sprint(vocab))
		path := filepath.Join(sub, "llama.onnx")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := graph.Save(twin, path, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		lora := filepath.Join(sub, "m.lora.onnx")
		mustLoracc(t, "inject", path, "--rank", "4", "--target", `attn\.[qkvo]_proj$`, "--init", "gaussian", "--seed", "1", "-o", lora)
		return path, lora
	}
	var path, lora string
	for _, vocab := range []int64{5003, 8192} {
		path, lora = model(vocab)
		data := precisionData(t, filepath.Dir(lora), 16, 48, vocab)
		var losses [2][]float64
		for i, r := range []string{"none", "loss"} {
			run := filepath.Join(filepath.Dir(lora), "run_"+r)
			mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "8", "--batch-size", "4",
				"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--static", "--pad-to-multiple-of", "16", "--recompute", r, "--out", run)
			losses[i] = lossValues(t, run)
		}
		if len(losses[0]) != 8 || len(losses[1]) != 8 {
			t.Fatalf("vocabulary %d: %d and %d loss rows", vocab, len(losses[0]), len(losses[1]))
		}
		for k := range losses[0] {
			if a, b := losses[0][k], losses[1][k]; math.Abs(a-b) > 1e-6*math.Abs(a) {
				t.Errorf("vocabulary %d, step %d: loss %v whole, %v in chunks", vocab, k+1, a, b)
			}
		}
	}
	a, err := adapter.Load(filepath.Join(filepath.Dir(lora), "m.lora.adapter"))
	if err != nil {
		t.Fatal(err)
	}
	batch := llamaBatch(4, 64, 8192)
	var planned [2]float64
	var peaks [2]int64
	for i, r := range []string{"none", "loss"} {
		out := filepath.Join(dir, "static_"+r)
		rep := mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--batch-size", "4", "--seq-len", "64", "--recompute", r, "--memory-report", "-o", out)
		m := regexp.MustCompile(`activations peak ([0-9.]+) MiB`).FindStringSubmatch(rep)
		if m == nil {
			t.Fatalf("no planned peak in:\n%s", rep)
		}
		planned[i], _ = strconv.ParseFloat(m[1], 64)
		peaks[i] = arenaPeak(t, e, out, a, batch, true, "")
	}
	t.Logf("tiny Llama, vocabulary 8192, 4×64: planned peak %.1f MiB whole, %.1f MiB in chunks; ORT CPU arena peak (memory pattern off) %d and %d bytes", planned[0], planned[1], peaks[0], peaks[1])
	if !(planned[1] <= planned[0]/2) {
		t.Errorf("the planned peak went from %.1f to %.1f MiB, want at most half", planned[0], planned[1])
	}
	if !(float64(peaks[1]) <= float64(peaks[0])*2/3) {
		t.Errorf("ORT's CPU arena peak went from %d to %d bytes, want at most two thirds", peaks[0], peaks[1])
	}
	// Where it cannot chunk it says why: without fixed dims, and with a
	// LoRA branch on the head.
	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--recompute", "loss", "-o", filepath.Join(dir, "dyn")); err == nil || !strings.Contains(err.Error(), "needs --static") {
		t.Errorf("--recompute loss without fixed dims: %v", err)
	}
	headed := filepath.Join(dir, "head.lora.onnx")
	mustLoracc(t, "inject", path, "--rank", "4", "--target", `lm_head`, "-o", headed)
	if _, err := loracc(t, "export-train", headed, "--loss", "lm", "--logits", "logits", "--batch-size", "4", "--seq-len", "64", "--recompute", "loss", "-o", filepath.Join(dir, "headed")); err == nil || !strings.Contains(err.Error(), "LoRA branch on the head") {
		t.Errorf("--recompute loss with an adapted head: %v", err)
	}
}

// llamaBatch is a Llama step's batch of b × t random ids below
// min(vocab, 256), their labels and an all-ones attention mask.
func llamaBatch(b, t, vocab int64) map[string]runtime.Tensor {
	ids := randomTokens(b, t, 1)
	ones := make([]int64, b*t)
	for i := range ones {
		ones[i] = 1
		ids.Data[8*i] = byte(int64(ids.Data[8*i]) % min(vocab, 256)) // little-endian: the low byte, the rest 0
		for k := 1; k < 8; k++ {
			ids.Data[8*i+k] = 0
		}
	}
	return map[string]runtime.Tensor{"input_ids": ids, "labels": ids, "attention_mask": runtime.Int64Tensor(ids.Shape, ones)}
}
