package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// TestStaticTrainGraph: export-train --static compiles the tiny GPT-2's
// step and eval graphs for fixed dims with no shape work left (no Shape,
// NonZero, ConstantOfShape, Range or Size node), and five steps of it give
// the same loss, gradient norm, params and optimizer state, bit for bit,
// as the dynamic graph on the same batch.
func TestStaticTrainGraph(t *testing.T) {
	e := env(t)
	lora, dynDir, io, params := gptTrainSetup(t)
	statDir := filepath.Join(filepath.Dir(dynDir), "static")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,seq=16", "-o", statDir)
	noShapeWork(t, statDir)
	statIO := readTrainIO(t, statDir)
	ids := randomTokens(2, 16, 7)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	dyn := newTrainer(t, e, dynDir, io.Train, batch, params)
	stat := newTrainer(t, e, statDir, statIO.Train, batch, params)
	for step := 1; step <= 5; step++ {
		a, b := dyn.step(t, step, 1e-2), stat.step(t, step, 1e-2)
		for _, o := range io.Train.Outputs {
			if !bytes.Equal(a[o.Name].Data, b[o.Name].Data) {
				t.Fatalf("step %d: output %q differs between the dynamic and the static graph", step, o.Name)
			}
		}
	}
	// A dim no input has is refused, naming the dims there are.
	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,sequence=16", "-o", filepath.Join(statDir, "x")); err == nil {
		t.Error("an unknown dim was accepted")
	} else if want := "no input has the dims sequence (symbolic dims of the inputs: batch, seq)"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// noShapeWork fails t if dir's train.onnx or eval.onnx has a Shape,
// NonZero, ConstantOfShape, Range or Size node or a symbolic input dim.
func noShapeWork(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{"train.onnx", "eval.onnx"} {
		m, err := graph.Load(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		ops := map[string]int{}
		m.Graph.Walk(func(n *graph.Node) { ops[n.Op]++ })
		for _, op := range []string{"Shape", "NonZero", "ConstantOfShape", "Range", "Size"} {
			if ops[op] != 0 {
				t.Errorf("%s: %d %s nodes left", name, ops[op], op)
			}
		}
		for _, in := range m.Graph.Inputs {
			for _, d := range in.Type.Shape {
				if !d.Known() {
					t.Errorf("%s: input %q keeps a symbolic dim %q", name, in.Name, d.Param)
				}
			}
		}
	}
}

// TestStaticGQAGraph: the static step of a Llama whose key/value heads
// are repeated to the query heads (grouped-query attention: Unsqueeze,
// Expand, Reshape, as Hugging Face's repeat_kv) has no shape work left
// either, in float32 and in bf16 for CUDA. The gradient of the masking
// Where used to un-broadcast at run time (Shape, NonZero) because the
// repeated keys' dims were not inferred through Expand.
func TestStaticGQAGraph(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 2)
	if cfg.KVHeads >= cfg.Heads {
		t.Fatalf("DefaultLlama has %d key/value heads for %d query heads: not grouped", cfg.KVHeads, cfg.Heads)
	}
	for _, extra := range [][]string{nil, {"--compute-dtype", "bf16", "--provider", "cuda"}} {
		out := filepath.Join(dir, fmt.Sprint("static", len(extra)))
		mustLoracc(t, append([]string{"export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch_size=2,sequence_length=16", "-o", out}, extra...)...)
		noShapeWork(t, out)
	}
}

// readTrainIO reads DIR/train.json.
func readTrainIO(t testing.TB, dir string) TrainIO {
	t.Helper()
	var io TrainIO
	data, err := os.ReadFile(filepath.Join(dir, "train.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &io); err != nil {
		t.Fatal(err)
	}
	return io
}

// TestTrainStatic: train --static runs each step on a graph compiled for
// its bucket (sequences padded to a multiple of 16, batch fixed), compiles
// each bucket once under RUNDIR/graphs/static-L, and trains like the
// dynamic run: the first step (same examples; padding never counts) gives
// the same loss to 1e-5, and the loss falls; with the state bound in
// device memory (the buckets' sessions sharing one arena) the losses are
// the host-fed run's.
func TestTrainStatic(t *testing.T) {
	env(t)
	dir := t.TempDir()
	args := tinyLMRun(t, dir, "--max-steps", "20", "--device", "cpu", "--save-every", "0")
	dyn, stat := filepath.Join(dir, "dyn"), filepath.Join(dir, "static")
	mustLoracc(t, args(dyn)...)
	mustLoracc(t, args(stat, "--static", "--pad-to-multiple-of", "16")...)
	buckets, err := filepath.Glob(filepath.Join(stat, "graphs", "static-*", "train.onnx"))
	if err != nil || len(buckets) < 2 {
		t.Fatalf("bucket graphs %v (%v), want at least two lengths", buckets, err)
	}
	for _, p := range buckets {
		l, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(filepath.Dir(p)), "static-"))
		if err != nil || l%16 != 0 || l > 48 {
			t.Errorf("bucket %s is not a multiple of 16 up to 48", p)
		}
	}
	ld, ls := lossValues(t, dyn), lossValues(t, stat)
	if len(ls) != 20 || len(ld) == 0 {
		t.Fatalf("static run wrote %d rows, dynamic %d", len(ls), len(ld))
	}
	if a, b := ld[0], ls[0]; math.Abs(a-b) > 1e-5*math.Abs(a) {
		t.Errorf("first step: dynamic loss %v, static %v", a, b)
	}
	if ls[19] >= ls[0] {
		t.Errorf("static loss did not fall: %v → %v", ls[0], ls[19])
	}
	// With the state kept in (host) device memory, the buckets' bound
	// sessions share one arena (runtime.SessionOptions.SharedArena): the
	// same losses.
	bound := filepath.Join(dir, "bound")
	mustLoracc(t, args(bound, "--static", "--pad-to-multiple-of", "16", "--device-state", "on")...)
	if lb := lossValues(t, bound); !slices.Equal(lb, ls) {
		t.Errorf("static with device state: losses %v, host-fed %v", lb, ls)
	}
	// A token-id example over --max-length stops the run at load, naming
	// its line and the limit (token data is never truncated).
	if _, err := loracc(t, args(filepath.Join(dir, "short"), "--static", "--max-length", "16")...); err == nil ||
		!strings.Contains(err.Error(), "data.jsonl:3: field \"input_ids\": 24 tokens, more than the maximum length 16") {
		t.Errorf("over --max-length: %v", err)
	}
}

// tinyLMRun injects rank-4 LoRA into the tiny GPT-2 under dir, writes
// variable-length lm data beside it and returns the train command line for
// a run directory; base holds the flags every run of the test shares.
func tinyLMRun(t *testing.T, dir string, base ...string) func(run string, extra ...string) []string {
	t.Helper()
	lora := filepath.Join(dir, "g.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/gpt2_tiny.onnx", "--rank", "4", "--seed", "1", "-o", lora)
	data := variableLengthData(t, dir)
	return func(run string, extra ...string) []string {
		a := []string{"train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--labels", "labels",
			"--batch-size", "4", "--lr", "0.01", "--out", run}
		return append(append(a, base...), extra...)
	}
}

// variableLengthData writes 40 lm examples of 5 to 40 tokens into dir.
func variableLengthData(t *testing.T, dir string) string {
	t.Helper()
	rng := rand.New(rand.NewPCG(5, 6))
	var b strings.Builder
	for range 40 {
		n := 5 + rng.IntN(36)
		ids := make([]string, n)
		for j := range ids {
			ids[j] = strconv.Itoa((j*7 + n) % 50)
		}
		s := strings.Join(ids, ",")
		fmt.Fprintf(&b, `{"input_ids": [%s], "labels": [%s]}`+"\n", s, s)
	}
	data := filepath.Join(dir, "data.jsonl")
	if err := os.WriteFile(data, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestWideLogitsPadded: a language model whose logits projection is
// 4,099 wide gets it padded to 4,104 columns in the compiled graphs (the
// aligned GEMM, its padding masked by the Gemm's bias), the eval graph's
// loss still equals cross-entropy computed here from the model's own
// logits, and the training step's loss and adapter gradients equal those
// of the same model compiled without the padding (its logits behind an
// Identity, which the padding does not match).
func TestWideLogitsPadded(t *testing.T) {
	e := env(t)
	const vocab, hidden, batch, seq = 4099, 16, 2, 5
	dir := t.TempDir()
	build := func(name string, identity bool) string {
		m := graph.NewModel(18)
		g := m.Graph
		ids := g.AddInput("input_ids", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}}})
		b := &graph.Builder{G: g}
		rnd := rand.New(rand.NewPCG(1, 2))
		tensor := func(name string, dims ...int64) *graph.Value {
			n := int(dims[0] * dims[1])
			xs := make([]float32, n)
			for i := range xs {
				xs[i] = float32(rnd.NormFloat64() * 0.3)
			}
			tt, err := graph.NewFloatTensor(name, graph.Float, dims, xs)
			if err != nil {
				t.Fatal(err)
			}
			return b.Const(tt)
		}
		h := b.Op("Gather", "h", []*graph.Value{tensor("emb", vocab, hidden), ids})
		h2 := b.Op("MatMul", "h2", []*graph.Value{h, tensor("hid.weight", hidden, hidden)})
		// The head as torch.onnx writes a tied one: Transpose of a [vocab, hidden] constant.
		head := b.Op("Transpose", "head.t", []*graph.Value{tensor("head.weight", vocab, hidden)}, graph.AttrIs("perm", 1, 0))
		name0 := "logits"
		if identity {
			name0 = "logits.product"
		}
		logits := b.Op("MatMul", name0, []*graph.Value{h2, head})
		if identity {
			logits = b.Op("Identity", "logits", []*graph.Value{logits})
		}
		logits.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: vocab}}}
		g.AddOutput(logits)
		path := filepath.Join(dir, name+".onnx")
		if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		return path
	}
	base := build("lm", false)
	lora := filepath.Join(dir, "lm.lora.onnx")
	mustLoracc(t, "inject", base, "--rank", "2", "--target", "^hid$", "-o", lora)
	out := filepath.Join(dir, "g")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--emit-grads", "-o", out)
	plainLora := filepath.Join(dir, "plain.lora.onnx")
	mustLoracc(t, "inject", build("plain", true), "--from-adapter", filepath.Join(dir, "lm.lora.adapter"), "-o", plainLora)
	plainOut := filepath.Join(dir, "plain")
	mustLoracc(t, "export-train", plainLora, "--loss", "lm", "--logits", "logits", "--emit-grads", "-o", plainOut)
	for _, c := range []struct {
		graph string
		want  bool
	}{{filepath.Join(out, "eval.onnx"), true}, {filepath.Join(out, "train.onnx"), true}, {filepath.Join(plainOut, "train.onnx"), false}} {
		em, err := graph.Load(c.graph)
		if err != nil {
			t.Fatal(err)
		}
		padded := false
		em.Graph.Walk(func(n *graph.Node) {
			if (n.Op != "MatMul" && n.Op != "Gemm") || n.Input(1) == nil {
				return
			}
			if p, _ := n.Input(1).Producer(); p != nil && p.Op == "Pad" {
				if pads, ok := graph.ConstInts(p.Input(1)); ok && len(pads) == 4 && pads[3] == 5 {
					padded = true
				}
			}
		})
		if padded != c.want {
			t.Errorf("%s: the logits projection reads its weight padded by 5 columns (to 4104): %v, want %v", c.graph, padded, c.want)
		}
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	feed, a := evalMatchesLogits(t, e, lora, out, filepath.Join(dir, "lm.lora.adapter"), rnd, batch, seq, vocab)
	// One training step of each compiled graph: same loss, same gradients.
	batchFeeds := map[string]runtime.Tensor{"input_ids": feed, "labels": feed}
	res := map[string]map[string]runtime.Tensor{}
	for name, d := range map[string]string{"padded": out, "plain": plainOut} {
		io := readTrainIO(t, d)
		res[name] = newTrainer(t, e, d, io.Train, batchFeeds, train.FromAdapter(a)).step(t, 1, 0)
	}
	if pl, ul := scalarOf(t, res["padded"]["loss"]), scalarOf(t, res["plain"]["loss"]); math.Abs(pl-ul) > 1e-6*math.Abs(ul) {
		t.Errorf("train loss %v with the padded head, %v without", pl, ul)
	}
	for _, l := range a.Layers {
		for _, part := range []string{".lora_A.grad", ".lora_B.grad"} {
			pg, err1 := res["padded"][l.Name+part].Floats()
			ug, err2 := res["plain"][l.Name+part].Floats()
			if err1 != nil || err2 != nil {
				t.Fatalf("%s%s: %v %v", l.Name, part, err1, err2)
			}
			if rel := relDiff(pg, ug); rel > 1e-5 {
				t.Errorf("%s%s differs by %.2g relative between the padded and the plain head", l.Name, part, rel)
			}
		}
	}
}

// TestTrainRefusesOutOfVocab: token ids and labels are checked against the
// model at load (the embedding's rows, the logits' width), so a bad id
// stops the run naming the data file, line and field before any graph is
// run, and a --pad-id past the vocabulary is refused likewise.
func TestTrainRefusesOutOfVocab(t *testing.T) {
	env(t)
	dir := t.TempDir()
	args := tinyLMRun(t, dir, "--max-steps", "1", "--device", "cpu", "--save-every", "0")
	bad := filepath.Join(dir, "bad.jsonl")
	for _, tc := range []struct{ line, want string }{
		{`{"input_ids": [1, 2, -1], "labels": [1, 2, 3]}`, `bad.jsonl:2: field "input_ids": value -1 at element 2 is negative`},
		{`{"input_ids": [1, 2, 256], "labels": [1, 2, 3]}`, `bad.jsonl:2: field "input_ids": value 256 at element 2 is outside [0, 256)`},
		{`{"input_ids": [1, 2, 3], "labels": [1, 2, 999]}`, `bad.jsonl:2: field "labels": value 999 at element 2 is outside [0, 256), the 256 classes of output "logits"`},
	} {
		if err := os.WriteFile(bad, []byte(`{"input_ids": [1], "labels": [1]}`+"\n"+tc.line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		a := args(filepath.Join(dir, "run"))
		for i := range a {
			if a[i] == "--data" {
				a[i+1] = bad
			}
		}
		if _, err := loracc(t, a...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.line, err, tc.want)
		}
	}
	if _, err := loracc(t, args(filepath.Join(dir, "pad"), "--pad-id", "256")...); err == nil || !strings.Contains(err.Error(), "pad id 256 is outside [0, 256)") {
		t.Errorf("--pad-id 256: %v", err)
	}
}
