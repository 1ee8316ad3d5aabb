package train

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// The loop's tests run it on fake graphs: a one-parameter "model" whose
// loss and update are simple functions of the examples fed, the lr and the
// step number, so a test can tell which examples, lr and step each step
// saw, and a K-step run must give exactly what K single steps give.

// fakeIO is train.json for the fake graphs, with a K-step graph of k
// steps per run.
func fakeIO(t testing.TB, k int) trainio.File {
	t.Helper()
	data := `[
		{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "batch"},
		{"name": "labels", "dtype": "int64", "shape": ["batch", "seq"], "role": "label"}`
	params := `,
		{"name": "l.lora_A", "dtype": "float32", "shape": [1, 1], "role": "param"},
		{"name": "l.lora_B", "dtype": "float32", "shape": [1, 1], "role": "param"}`
	step := func(shape string) string {
		return `{"inputs": ` + data + params + `,
		{"name": "m", "dtype": "float32", "shape": [1], "role": "state"},
		{"name": "lr", "dtype": "float32", "shape": ` + shape + `, "role": "lr"},
		{"name": "step", "dtype": "float32", "shape": ` + shape + `, "role": "step"}],
	"outputs": [
		{"name": "loss", "dtype": "float32", "shape": ` + shape + `, "role": "loss"},
		{"name": "grad_norm", "dtype": "float32", "shape": ` + shape + `, "role": "grad_norm"},
		{"name": "l.lora_A.new", "dtype": "float32", "shape": [1, 1], "role": "updated_param", "replaces": "l.lora_A"},
		{"name": "m.new", "dtype": "float32", "shape": [1], "role": "updated_state", "replaces": "m"}]}`
	}
	js := `{"train": ` + step("[]") + `,
	"eval": {"inputs": ` + data + params + `],
		"outputs": [{"name": "loss", "dtype": "float32", "shape": [], "role": "loss"}]}`
	if k > 1 {
		js += fmt.Sprintf(`, "train_multi": %s, "steps_per_run": %d`, step(fmt.Sprintf("[%d]", k)), k)
	}
	var f trainio.File
	if err := json.Unmarshal([]byte(js+"}"), &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// fakeTokens is example i's token count in fakeData: its labels from the
// second on.
func fakeTokens(i int) int { return 1 + i%3 }

// fakeData is n lm examples; example i's tokens are all i (so a graph can
// tell which examples it was fed), 2 + i%3 of them.
func fakeData(t testing.TB, n int) *dataset.Set {
	t.Helper()
	var b strings.Builder
	for i := range n {
		ids := strings.TrimSuffix(strings.Repeat(fmt.Sprintf("%d,", i), fakeTokens(i)+1), ",")
		fmt.Fprintf(&b, `{"input_ids": [%s], "labels": [%s]}`+"\n", ids, ids)
	}
	path := filepath.Join(t.TempDir(), "data.jsonl")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := dataset.Load(path, dataset.Spec{Inputs: fakeIO(t, 1).Train.Inputs[:2], Loss: "lm", Labels: "labels", IgnoreIndex: -100})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// fakeAdapter is one rank-1 layer "l" of 1×1 matrices.
func fakeAdapter() *adapter.Adapter {
	return &adapter.Adapter{Config: adapter.NewConfig(1, 1, "l"), Layers: []adapter.Layer{{Name: "l", Rank: 1, In: 1, Out: 1, A: []float32{0.5}, B: []float32{0}}}}
}

// fakeConfig trains fakeAdapter on n fake examples for steps steps of
// batch examples, in a fresh run folder.
func fakeConfig(t testing.TB, n, batch, steps int) Config {
	t.Helper()
	return Config{
		Run: t.TempDir(), IO: fakeIO(t, 1), Adapter: fakeAdapter(), Data: fakeData(t, n),
		MaxSteps: steps, BatchSize: batch, Schedule: Schedule{Kind: "linear", LR: 0.1, Warmup: 2},
		Seed: 7, Out: io.Discard,
	}
}

// seen is what one optimizer step of a fake graph was fed.
type seen struct {
	idx  []int64 // the examples
	lr   float32
	step float32
}

// fakeTrain is the fake training graph, k steps per run. Step j of a run
// takes rows [j·rows/k, (j+1)·rows/k) of the batch and computes
//
//	loss = A + sum(idx)/100, grad_norm = len(idx), A ← A − lr·(1 + step/1000), m ← m + len(idx)
//
// in float32; lossAt[step], when set, replaces a step's loss.
type fakeTrain struct {
	k      int
	lossAt map[int]float32
	steps  []seen
	runs   int
}

func (f *fakeTrain) Run(feeds map[string]runtime.Tensor, outputs []string) (map[string]runtime.Tensor, error) {
	f.runs++
	ids, rows, err := firstColumn(feeds["input_ids"])
	if err != nil {
		return nil, err
	}
	fs, err := floatFeeds(feeds, "lr", "step", "l.lora_A", "m")
	if err != nil {
		return nil, err
	}
	lrs, steps := fs[0], fs[1]
	if len(lrs) != f.k || len(steps) != f.k || rows%f.k != 0 {
		return nil, fmt.Errorf("fake: %d lrs, %d steps, %d rows for %d steps per run", len(lrs), len(steps), rows, f.k)
	}
	a, m := fs[2][0], fs[3][0]
	per := rows / f.k
	losses, norms := make([]float32, f.k), make([]float32, f.k)
	for j := range f.k {
		part := ids[j*per : (j+1)*per]
		f.steps = append(f.steps, seen{idx: part, lr: lrs[j], step: steps[j]})
		var sum int64
		for _, i := range part {
			sum += i
		}
		losses[j], norms[j] = a+float32(sum)/100, float32(len(part))
		if l, ok := f.lossAt[int(steps[j])]; ok {
			losses[j] = l
		}
		a -= lrs[j] * (1 + steps[j]/1000)
		m += float32(len(part))
	}
	var shape []int64
	if f.k > 1 {
		shape = []int64{int64(f.k)}
	}
	return map[string]runtime.Tensor{
		"loss": runtime.FloatTensor(shape, losses), "grad_norm": runtime.FloatTensor(shape, norms),
		"l.lora_A.new": runtime.FloatTensor([]int64{1, 1}, []float32{a}), "m.new": runtime.FloatTensor([]int64{1}, []float32{m}),
	}, nil
}

// fakeEval is the fake eval graph: a batch's loss is A plus the mean of its
// example indices.
type fakeEval struct{ batches [][]int64 }

func (f *fakeEval) Run(feeds map[string]runtime.Tensor, outputs []string) (map[string]runtime.Tensor, error) {
	ids, rows, err := firstColumn(feeds["input_ids"])
	if err != nil {
		return nil, err
	}
	av, err := floatFeeds(feeds, "l.lora_A")
	if err != nil {
		return nil, err
	}
	f.batches = append(f.batches, ids)
	var sum int64
	for _, i := range ids {
		sum += i
	}
	return map[string]runtime.Tensor{"loss": runtime.FloatTensor(nil, []float32{av[0][0] + float32(sum)/float32(rows)})}, nil
}

// floatFeeds reads the float inputs names.
func floatFeeds(feeds map[string]runtime.Tensor, names ...string) ([][]float32, error) {
	out := make([][]float32, len(names))
	for i, n := range names {
		f, err := feeds[n].Floats()
		if err != nil || len(f) == 0 {
			return nil, fmt.Errorf("fake: input %q: %v values, %v", n, len(f), err)
		}
		out[i] = f
	}
	return out, nil
}

// firstColumn reads a [rows, seq] int64 batch's first column: the example
// indices of fakeData.
func firstColumn(t runtime.Tensor) ([]int64, int, error) {
	if len(t.Shape) != 2 || len(t.Data) != int(8*t.Shape[0]*t.Shape[1]) {
		return nil, 0, fmt.Errorf("fake: input_ids of shape %v", t.Shape)
	}
	rows, seq := int(t.Shape[0]), int(t.Shape[1])
	out := make([]int64, rows)
	for r := range rows {
		out[r] = int64(binary.LittleEndian.Uint64(t.Data[8*r*seq:]))
	}
	return out, rows, nil
}

// fakeRun is one run of the loop on fake graphs.
type fakeRun struct {
	train, multi *fakeTrain
	eval         *fakeEval
	res          *Result
	err          error
}

// runFake runs cfg's loop on fake graphs: a K-step one when cfg.IO has
// one, an eval one when cfg.Eval is set. lossAt, when set, overrides the
// losses of the steps it names.
func runFake(t testing.TB, cfg Config, lossAt map[int]float32) *fakeRun {
	t.Helper()
	return runFakeCtx(t, context.Background(), cfg, lossAt)
}

// runFakeCtx is runFake under ctx.
func runFakeCtx(t testing.TB, ctx context.Context, cfg Config, lossAt map[int]float32) *fakeRun {
	t.Helper()
	r, err := newRunner(cfg)
	if err != nil {
		return &fakeRun{err: err}
	}
	defer r.metrics.Close()
	fr := &fakeRun{train: &fakeTrain{k: 1, lossAt: lossAt}, eval: &fakeEval{}}
	r.single.sess = fr.train
	if cfg.IO.Multi != nil {
		fr.multi = &fakeTrain{k: cfg.IO.StepsPerRun, lossAt: lossAt}
		r.multi = &stepGraph{io: *cfg.IO.Multi, sess: fr.multi, k: cfg.IO.StepsPerRun}
	}
	if cfg.Eval != nil {
		r.eval = fr.eval
	}
	fr.res, fr.err = r.loop(ctx)
	return fr
}

// allSteps is every step the fake graphs saw, in step order (single and
// K-step runs interleave).
func (fr *fakeRun) allSteps() []seen {
	out := append([]seen(nil), fr.train.steps...)
	if fr.multi != nil {
		out = append(out, fr.multi.steps...)
	}
	slices.SortFunc(out, func(a, b seen) int { return cmp.Compare(a.step, b.step) })
	return out
}

// metricsRows reads metrics.csv's rows as columns by header name.
func metricsRows(t *testing.T, run string) []map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(run, "metrics.csv"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	head := strings.Split(lines[0], ",")
	var out []map[string]string
	for _, l := range lines[1:] {
		m := map[string]string{}
		for i, v := range strings.Split(l, ",") {
			m[head[i]] = v
		}
		out = append(out, m)
	}
	return out
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }
