package main

import (
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
)

// nextTokenCE is the mean next-token cross-entropy of logits [batch, seq,
// vocab] against ids [batch, seq], computed here in float64.
func nextTokenCE(lg []float32, ids []int64, batch, seq, vocab int) float64 {
	var sum float64
	for bi := range batch {
		for p := range seq - 1 {
			row := lg[(bi*seq+p)*vocab : (bi*seq+p+1)*vocab]
			mx := math.Inf(-1)
			for _, v := range row {
				mx = math.Max(mx, float64(v))
			}
			var z float64
			for _, v := range row {
				z += math.Exp(float64(v) - mx)
			}
			sum += mx + math.Log(z) - float64(row[ids[bi*seq+p+1]])
		}
	}
	return sum / float64(batch*(seq-1))
}

// TestRMSNormFused: Llama's RMSNorm as torch.onnx writes it (Pow,
// ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul) compiles to one
// SimplifiedLayerNormalization, and the eval graph's loss equals the
// cross-entropy of the original model's logits.
func TestRMSNormFused(t *testing.T) {
	e := env(t)
	const vocab, hidden, batch, seq = 40, 8, 2, 6
	m := graph.NewModel(18)
	g := m.Graph
	ids := g.AddInput("input_ids", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}}})
	b := &graph.Builder{G: g}
	rnd := rand.New(rand.NewPCG(5, 6))
	tensor := func(name string, dims ...int64) *graph.Value {
		n := 1
		for _, d := range dims {
			n *= int(d)
		}
		xs := make([]float32, n)
		for i := range xs {
			xs[i] = float32(rnd.NormFloat64()*0.5 + 0.1)
		}
		tt, err := graph.NewFloatTensor(name, graph.Float, dims, xs)
		if err != nil {
			t.Fatal(err)
		}
		return b.Const(tt)
	}
	k := func(name string, v float32) *graph.Value {
		tt, err := graph.NewFloatTensor(name, graph.Float, nil, []float32{v})
		if err != nil {
			t.Fatal(err)
		}
		return b.Const(tt)
	}
	h := b.Op("Gather", "h", []*graph.Value{tensor("emb", vocab, hidden), ids})
	sq := b.Op("Pow", "sq", []*graph.Value{h, k("two", 2)})
	ms := b.Op("ReduceMean", "ms", []*graph.Value{sq, b.Int64s("axes", []int64{-1})}, graph.AttrI("keepdims", 1))
	rs := b.Op("Reciprocal", "rs", []*graph.Value{b.Op("Sqrt", "sd", []*graph.Value{b.Op("Add", "ve", []*graph.Value{ms, k("eps", 1e-6)})})})
	normed := b.Op("Mul", "weight", []*graph.Value{tensor("norm.weight", hidden), b.Op("Mul", "nx", []*graph.Value{h, rs})})
	h2 := b.Op("MatMul", "h2", []*graph.Value{normed, tensor("hid.weight", hidden, hidden)})
	logits := b.Op("MatMul", "logits", []*graph.Value{h2, tensor("head.weight", hidden, vocab)})
	logits.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: vocab}}}
	g.AddOutput(logits)
	dir := t.TempDir()
	base := filepath.Join(dir, "lm.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	lora, out, graphs := exportLM(t, base, "^hid$")
	for name, cm := range graphs {
		ops := map[string]int{}
		cm.Graph.Walk(func(n *graph.Node) {
			if n.Op != "Pow" || graph.ConstTensor(n.Input(0)) == nil { // the optimizer's β^step is no RMSNorm
				ops[n.Op]++
			}
		})
		if ops["SimplifiedLayerNormalization"] != 1 || ops["Pow"] != 0 || ops["Reciprocal"] != 0 {
			t.Errorf("%s: %d SimplifiedLayerNormalization, %d Pow, %d Reciprocal; want 1, 0, 0", name, ops["SimplifiedLayerNormalization"], ops["Pow"], ops["Reciprocal"])
		}
	}
	evalMatchesLogits(t, e, lora, out, filepath.Join(dir, "lm.lora.adapter"), rnd, batch, seq, vocab)
}

// exportLM injects a rank-2 adapter into the model at base (targets
// matching target) and compiles its lm step with export-train; it returns
// the injected model's path, the export folder and its train.onnx and
// eval.onnx by name.
func exportLM(t *testing.T, base, target string) (lora, out string, graphs map[string]*graph.Model) {
	t.Helper()
	lora = strings.TrimSuffix(base, ".onnx") + ".lora.onnx"
	mustLoracc(t, "inject", base, "--rank", "2", "--target", target, "-o", lora)
	out = filepath.Join(filepath.Dir(base), "g")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "-o", out)
	graphs = map[string]*graph.Model{}
	for _, name := range []string{"train.onnx", "eval.onnx"} {
		m, err := graph.Load(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		graphs[name] = m
	}
	return lora, out, graphs
}

// evalMatchesLogits runs the injected model at lora on random ids and
// checks that out/eval.onnx, fed the adapter in adapterDir, gives the
// next-token cross-entropy of those logits. It returns the ids (as
// input_ids and labels) and the adapter for further checks.
func evalMatchesLogits(t *testing.T, e *runtime.Env, lora, out, adapterDir string, rnd *rand.Rand, batch, seq, vocab int) (runtime.Tensor, *adapter.Adapter) {
	t.Helper()
	idv := make([]int64, batch*seq)
	for i := range idv {
		idv[i] = int64(rnd.IntN(vocab))
	}
	feed := runtime.Int64Tensor([]int64{int64(batch), int64(seq)}, idv)
	s, err := e.NewSession(lora, runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	o, err := s.Run(map[string]runtime.Tensor{"input_ids": feed}, []string{"logits"})
	if err != nil {
		t.Fatal(err)
	}
	lg, _ := o["logits"].Floats()
	want := nextTokenCE(lg, idv, batch, seq, vocab)
	es, err := e.NewSession(filepath.Join(out, "eval.onnx"), runtime.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer es.Close()
	a, err := adapter.Load(adapterDir)
	if err != nil {
		t.Fatal(err)
	}
	feeds := map[string]runtime.Tensor{"input_ids": feed, "labels": feed}
	for k, v := range train.FromAdapter(a) {
		feeds[k] = v
	}
	lo, err := es.Run(feeds, []string{"loss"})
	if err != nil {
		t.Fatal(err)
	}
	if got := scalarOf(t, lo["loss"]); math.Abs(got-want) > 1e-5*want {
		t.Errorf("eval loss %v, cross-entropy of the model's logits %v", got, want)
	}
	return feed, a
}

// TestSharedInputBranchesMerged: the q, k and v branches of the testdata
// transformer block read one input, so the training graph computes
// x·[A_q | A_k | A_v] once (lorafuse.go); TestTrainMatchesPyTorch checks
// the gradients of such a merge (bert_tiny) against PyTorch.
func TestSharedInputBranchesMerged(t *testing.T) {
	env(t)
	dir := t.TempDir()
	lora := filepath.Join(dir, "tb.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/transformer_block.onnx", "--rank", "4", "-o", lora)
	out := filepath.Join(dir, "g")
	mustLoracc(t, "export-train", lora, "--loss", "mse", "-o", out)
	m, err := graph.Load(filepath.Join(out, "train.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	var concats, xa int
	m.Graph.Walk(func(n *graph.Node) {
		if n.Op == "Concat" && n.NumInputs() == 3 && n.Input(0).IsGraphInput() && n.Input(0).Name == "attn.q_proj.lora_A" {
			concats++
		}
		if n.Op == "MatMul" && n.Input(1).IsGraphInput() && strings.HasSuffix(n.Input(1).Name, ".lora_A") {
			xa++
		}
	})
	if concats != 1 || xa != 3 { // o_proj, fc1 and fc2 keep their own x·A
		t.Errorf("%d Concats of the q/k/v lora_A, %d unmerged x·A products; want 1 and 3", concats, xa)
	}
	// Compiled for fixed dims, the merged step keeps no shape work: the
	// Split's pieces have static dims (infer), so every Reshape of their
	// gradients reads a folded shape. (A shape computed at run time makes
	// ONNX Runtime copy it to the host, which refuses CUDA-graph capture.)
	static := filepath.Join(dir, "s")
	mustLoracc(t, "export-train", lora, "--loss", "mse", "--static", "batch=2,seq=8", "-o", static)
	sm, err := graph.Load(filepath.Join(static, "train.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	sm.Graph.Walk(func(n *graph.Node) {
		if n.Op == "Shape" || (n.Op == "Reshape" && graph.ConstTensor(n.Input(1)) == nil) {
			t.Errorf("static step keeps %s %q (a shape computed at run time)", n.Op, n.Name)
		}
	})
}
