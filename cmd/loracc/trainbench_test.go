package main

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
	"github.com/loracc/loracc/trainio"
)

// gptTrainSetup is refTrainSetup for the tiny GPT-2 with the lm loss.
func gptTrainSetup(t testing.TB, extra ...string) (string, string, TrainIO, map[string]runtime.Tensor) {
	lora, out, io, params, _ := refTrainSetup(t, "gpt2_tiny", append([]string{"--loss", "lm"}, extra...)...)
	return lora, out, io, params
}

// refTrainSetup injects the PEFT adapter PyTorch started from
// (testdata/ref/<model>_lora_init) into a testdata export, compiles its
// training graph with the given export-train flags, and returns the
// injected model, the graphs' folder, train.json, the initial params and
// the adapter.
func refTrainSetup(t testing.TB, model string, exportArgs ...string) (string, string, TrainIO, map[string]runtime.Tensor, *adapter.Adapter) {
	t.Helper()
	a, err := adapter.Load(filepath.Join("../../testdata/ref", model+"_lora_init"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := graph.Load(filepath.Join("../../testdata/models", model+".onnx"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rewrite.Run(m, &rewrite.Context{Lora: lora.Options{Adapter: a}}, "inject"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lora := filepath.Join(dir, "m.lora.onnx")
	if err := graph.Save(m, lora, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "train")
	var o, e bytesBuffer
	if err := run(append([]string{"loracc", "export-train", lora, "--logits", "logits", "-o", out}, exportArgs...), &o, &e); err != nil {
		t.Fatal(err)
	}
	io := readTrainIO(t, out)
	params := map[string]runtime.Tensor{}
	for _, l := range a.Layers {
		params[l.Name+".lora_A"] = runtime.FloatTensor([]int64{int64(l.In), int64(l.Rank)}, adapter.Transpose(l.A, l.Rank, l.In))
		params[l.Name+".lora_B"] = runtime.FloatTensor([]int64{int64(l.Rank), int64(l.Out)}, adapter.Transpose(l.B, l.Out, l.Rank))
	}
	return lora, out, io, params, a
}

type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// randomTokens is a [batch, seq] int64 batch of ids below 256.
func randomTokens(batch, seq int64, seed uint64) runtime.Tensor {
	rng := rand.New(rand.NewPCG(seed, 3))
	ids := make([]int64, batch*seq)
	for i := range ids {
		ids[i] = int64(rng.IntN(256))
	}
	return runtime.Int64Tensor([]int64{batch, seq}, ids)
}

// TestTrainGraphPortable: the compiled graphs use only ai.onnx ops and
// give the same step with ORT's graph optimizations on and off.
func TestTrainGraphPortable(t *testing.T) {
	e := env(t)
	_, dir, io, params := gptTrainSetup(t)
	for _, name := range []string{"train.onnx", "eval.onnx"} {
		m, err := graph.Load(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		m.Graph.Walk(func(n *graph.Node) {
			if n.Domain != "" && n.Domain != "ai.onnx" {
				t.Errorf("%s: node %q (%s) is in domain %q", name, n.Name, n.Op, n.Domain)
			}
		})
		for _, o := range m.Opsets {
			if o.Domain != "" && o.Domain != "ai.onnx" {
				t.Errorf("%s imports opset domain %q", name, o.Domain)
			}
		}
	}
	ids := randomTokens(2, 16, 1)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	var losses []float64
	for _, disable := range []bool{false, true} {
		s, err := e.NewSession(filepath.Join(dir, "train.onnx"), runtime.SessionOptions{DisableOptimizations: disable})
		if err != nil {
			t.Fatal(err)
		}
		tr := &trainer{sess: s, io: io.Train}
		tr2 := newTrainer(t, e, dir, io.Train, batch, params)
		tr.feeds, tr.outputs = tr2.feeds, tr2.outputs
		out := tr.step(t, 1, 1e-3)
		losses = append(losses, scalarOf(t, out["loss"]))
		s.Close()
	}
	if math.Abs(losses[0]-losses[1]) > 1e-5*math.Abs(losses[0]) {
		t.Errorf("loss with optimizations %v, without %v", losses[0], losses[1])
	}
	if len(io.Train.ByRole(trainio.RoleUpdatedParam)) != 16 {
		t.Errorf("want 16 updated params, got %d", len(io.Train.ByRole(trainio.RoleUpdatedParam)))
	}
}

// BenchmarkGPTForward and BenchmarkGPTTrainStep time, on the CPU, one
// forward pass of the injected tiny GPT-2 and one full training step
// (forward, loss, backward for the adapter, AdamW) on the same batch of
// 8 × 64 tokens. Their ratio is the backward/forward cost:
//
//	go test ./cmd/loracc -run '^$' -bench 'GPT' -benchtime 200x
func BenchmarkGPTForward(b *testing.B) {
	e := env(b)
	lora, _, _, _ := gptTrainSetup(b)
	s, err := e.NewSession(lora, runtime.SessionOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	feeds := map[string]runtime.Tensor{"input_ids": randomTokens(8, 64, 1)}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.Run(feeds, []string{"logits"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGPTTrainStep(b *testing.B) {
	e := env(b)
	_, dir, io, params := gptTrainSetup(b)
	ids := randomTokens(8, 64, 1)
	tr := newTrainer(b, e, dir, io.Train, map[string]runtime.Tensor{"input_ids": ids, "labels": ids}, params)
	b.ResetTimer()
	n := 0
	for b.Loop() {
		n++
		tr.step(b, n, 1e-3)
	}
}

// BenchmarkStepOverEval is the CPU cost of a training step over a forward
// pass, measured as the GPU speed issue defines it: testdata's tiny GPT-2
// injected at r=8 on every target, a batch of 8 × 64, lm loss, AdamW, one
// intra-op thread; one run of train.onnx fetching only the loss against
// one run of eval.onnx (forward + loss) on the same batch, alternating,
// medians over b.N pairs. Sub-benchmarks: the dynamic graphs and the ones
// specialised to 8 × 64 (export-train --static).
//
//	go test ./cmd/loracc -run '^$' -bench StepOverEval -benchtime 20x
func BenchmarkStepOverEval(b *testing.B) {
	e := env(b)
	dir := b.TempDir()
	lora := filepath.Join(dir, "m.lora.onnx")
	var o, errb bytesBuffer
	if err := run([]string{"loracc", "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "8", "--seed", "1", "-o", lora}, &o, &errb); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []struct{ name, static string }{{"dynamic", ""}, {"static", "batch=8,seq=64"}} {
		b.Run(mode.name, func(b *testing.B) {
			out := filepath.Join(dir, mode.name)
			args := []string{"loracc", "export-train", lora, "--loss", "lm", "--logits", "logits", "-o", out}
			if mode.static != "" {
				args = append(args, "--static", mode.static)
			}
			if err := run(args, &o, &errb); err != nil {
				b.Fatal(err)
			}
			io := readTrainIO(b, out)
			a, err := adapter.Load(filepath.Join(dir, "m.lora.adapter"))
			if err != nil {
				b.Fatal(err)
			}
			ids := randomTokens(8, 64, 1)
			batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
			opts := runtime.SessionOptions{IntraOpThreads: 1, ProfilePrefix: os.Getenv("LORACC_PROFILE")}
			tr := newTrainerOn(b, e, out, io.Train, batch, train.FromAdapter(a), opts)
			tr.feeds["lr"], tr.feeds["step"] = runtime.FloatTensor(nil, []float32{1e-3}), runtime.FloatTensor(nil, []float32{1})
			ev, err := e.NewSession(filepath.Join(out, "eval.onnx"), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer ev.Close()
			evFeeds := map[string]runtime.Tensor{}
			for _, in := range io.Eval.Inputs {
				evFeeds[in.Name] = tr.feeds[in.Name]
			}
			trFeeds := map[string]runtime.Tensor{}
			for _, in := range io.Train.Inputs {
				trFeeds[in.Name] = tr.feeds[in.Name]
			}
			timed := func(s *runtime.Session, feeds map[string]runtime.Tensor) float64 {
				start := time.Now()
				if _, err := s.Run(feeds, []string{"loss"}); err != nil {
					b.Fatal(err)
				}
				return float64(time.Since(start).Microseconds()) / 1000
			}
			for range 3 { // warm-up
				timed(tr.sess, trFeeds)
				timed(ev, evFeeds)
			}
			var steps, evals []float64
			b.ResetTimer()
			for b.Loop() {
				steps = append(steps, timed(tr.sess, trFeeds))
				evals = append(evals, timed(ev, evFeeds))
			}
			ratios := make([]float64, len(steps))
			for i := range steps {
				ratios[i] = steps[i] / evals[i]
			}
			ms, me := median(steps), median(evals)
			b.ReportMetric(ms, "train-ms")
			b.ReportMetric(me, "eval-ms")
			b.ReportMetric(ms/me, "train/eval")
			b.ReportMetric(median(ratios), "pair-ratio")
		})
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return math.NaN()
	}
	return s[len(s)/2]
}
