package train

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loracc/loracc/dist"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// The data-parallel loop's tests run ranks as goroutines joined by a real
// dist.Group on the loopback, on fake split graphs: a token-weighted
// "loss" whose gradient records which examples it saw, so a test can
// check the shards and compare N ranks × batch b with one process ×
// batch N·b.

// fakeSplitIO is fakeIO with the split step's graphs.
func fakeSplitIO(t testing.TB) trainio.File {
	t.Helper()
	f := fakeIO(t, 1)
	js := `{"grad": {"inputs": [
		{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "batch"},
		{"name": "labels", "dtype": "int64", "shape": ["batch", "seq"], "role": "label"},
		{"name": "l.lora_A", "dtype": "float32", "shape": [1, 1], "role": "param"},
		{"name": "l.lora_B", "dtype": "float32", "shape": [1, 1], "role": "param"}],
	"outputs": [
		{"name": "loss_sum", "dtype": "float32", "shape": [], "role": "loss_sum"},
		{"name": "loss_count", "dtype": "int64", "shape": [], "role": "count"},
		{"name": "l.lora_A.grad", "dtype": "float32", "shape": [1, 1], "role": "grad"},
		{"name": "l.lora_B.grad", "dtype": "float32", "shape": [1, 1], "role": "grad"}]},
	"optim": {"inputs": [
		{"name": "l.lora_A", "dtype": "float32", "shape": [1, 1], "role": "param"},
		{"name": "l.lora_B", "dtype": "float32", "shape": [1, 1], "role": "param"},
		{"name": "m", "dtype": "float32", "shape": [1], "role": "state"},
		{"name": "lr", "dtype": "float32", "shape": [], "role": "lr"},
		{"name": "step", "dtype": "float32", "shape": [], "role": "step"},
		{"name": "l.lora_A.grad", "dtype": "float32", "shape": [1, 1], "role": "grad"},
		{"name": "l.lora_B.grad", "dtype": "float32", "shape": [1, 1], "role": "grad"},
		{"name": "loss_count", "dtype": "int64", "shape": [], "role": "count"}],
	"outputs": [
		{"name": "grad_norm", "dtype": "float32", "shape": [], "role": "grad_norm"},
		{"name": "l.lora_A.new", "dtype": "float32", "shape": [1, 1], "role": "updated_param", "replaces": "l.lora_A"},
		{"name": "m.new", "dtype": "float32", "shape": [1], "role": "updated_state", "replaces": "m"}]}}`
	if err := json.Unmarshal([]byte(js), &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// fakeGrad is the fake gradient graph: over its examples i, each of
// fakeTokens(i) tokens, loss_sum = Σ tokens·(A + i/100), count = Σ
// tokens, A's gradient Σ tokens·i and B's the count. failAt makes a step's
// run fail.
type fakeGrad struct {
	seen   [][]int64
	failAt int
}

func (f *fakeGrad) Run(feeds map[string]runtime.Tensor, _ []string) (map[string]runtime.Tensor, error) {
	if f.failAt > 0 && len(f.seen)+1 == f.failAt {
		return nil, fmt.Errorf("fake: the gradient graph fails at its run %d", f.failAt)
	}
	ids, a, err := idsAndA(feeds)
	if err != nil {
		return nil, err
	}
	f.seen = append(f.seen, ids)
	var sum, ga float32
	var count int64
	for _, i := range ids {
		w := float32(fakeTokens(int(i)))
		sum += w * (a + float32(i)/100)
		ga += w * float32(i)
		count += int64(fakeTokens(int(i)))
	}
	return map[string]runtime.Tensor{
		"loss_sum": runtime.FloatTensor(nil, []float32{sum}), "loss_count": runtime.Int64Tensor([]int64{}, []int64{count}),
		"l.lora_A.grad": runtime.FloatTensor([]int64{1, 1}, []float32{ga}), "l.lora_B.grad": runtime.FloatTensor([]int64{1, 1}, []float32{float32(count)}),
	}, nil
}

// idsAndA reads a fake graph's example indices and its param A.
func idsAndA(feeds map[string]runtime.Tensor) ([]int64, float32, error) {
	ids, _, err := firstColumn(feeds["input_ids"])
	if err != nil {
		return nil, 0, err
	}
	a, err := floatFeeds(feeds, "l.lora_A")
	if err != nil {
		return nil, 0, err
	}
	return ids, a[0][0], nil
}

// fakeOptim is the fake optimizer graph: g = A's summed gradient over the
// global count; A ← A − lr·g/100, m ← m + count, grad_norm = g.
type fakeOptim struct{}

func (fakeOptim) Run(feeds map[string]runtime.Tensor, _ []string) (map[string]runtime.Tensor, error) {
	fs, err := floatFeeds(feeds, "l.lora_A", "m", "lr", "l.lora_A.grad")
	if err != nil {
		return nil, err
	}
	c, err := feeds["loss_count"].Int64s()
	if err != nil || len(c) != 1 {
		return nil, fmt.Errorf("fake: loss_count: %v", err)
	}
	g := fs[3][0] / float32(max(c[0], 1))
	return map[string]runtime.Tensor{
		"grad_norm":    runtime.FloatTensor(nil, []float32{g}),
		"l.lora_A.new": runtime.FloatTensor([]int64{1, 1}, []float32{fs[0][0] - fs[2][0]*g/100}),
		"m.new":        runtime.FloatTensor([]int64{1}, []float32{fs[1][0] + float32(c[0])}),
	}, nil
}

// fakeTokenEval is an eval graph whose loss is a token mean, as the real
// ones are: A + i/100 over each example's tokens, so the token-weighted
// mean of batch losses does not depend on the batching.
type fakeTokenEval struct{}

func (fakeTokenEval) Run(feeds map[string]runtime.Tensor, _ []string) (map[string]runtime.Tensor, error) {
	ids, a, err := idsAndA(feeds)
	if err != nil {
		return nil, err
	}
	var sum, w float32
	for _, i := range ids {
		sum += float32(fakeTokens(int(i))) * (a + float32(i)/100)
		w += float32(fakeTokens(int(i)))
	}
	return map[string]runtime.Tensor{"loss": runtime.FloatTensor(nil, []float32{sum / w})}, nil
}

// splitConfig is fakeConfig with the split step, a fresh run folder each.
func splitConfig(t testing.TB, n, batch, steps int) Config {
	cfg := fakeConfig(t, n, batch, steps)
	cfg.IO, cfg.Split = fakeSplitIO(t), true
	return cfg
}

// rankRun is one rank's run.
type rankRun struct {
	grad *fakeGrad
	res  *Result
	err  error
}

// runRanks runs cfgs[r] as rank r of len(cfgs) ranks (alone for one),
// each under ctxs[r] when given; a rank that fails aborts the group, as
// the command does.
func runRanks(t *testing.T, cfgs []Config, ctxs []context.Context, grads []*fakeGrad) []*rankRun {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	out := make([]*rankRun, len(cfgs))
	var wg sync.WaitGroup
	for r, cfg := range cfgs {
		out[r] = &rankRun{grad: &fakeGrad{}}
		if grads != nil && grads[r] != nil {
			out[r].grad = grads[r]
		}
		ctx := context.Background()
		if ctxs != nil && ctxs[r] != nil {
			ctx = ctxs[r]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rr := out[r]
			if len(cfgs) > 1 {
				g, err := dist.Join(dist.Launch{Rank: r, World: len(cfgs), MasterAddr: "127.0.0.1", MasterPort: port}, dist.Options{JoinTimeout: 10 * time.Second, Timeout: 10 * time.Second})
				if err != nil {
					rr.err = err
					return
				}
				defer g.Close()
				cfg.Comm = g
				defer func() {
					if rr.err != nil {
						g.Abort(rr.err.Error())
					}
				}()
			}
			run, err := newRunner(cfg)
			if err != nil {
				rr.err = err
				return
			}
			defer run.metrics.Close()
			run.single.split.grad, run.single.split.optim = rr.grad, fakeOptim{}
			if cfg.Eval != nil {
				run.eval = fakeTokenEval{}
			}
			rr.res, rr.err = run.loop(ctx)
		}()
	}
	wg.Wait()
	return out
}

func nearRel(a, b, tol float64) bool {
	return math.Abs(a-b) <= tol*math.Max(1e-30, math.Max(math.Abs(a), math.Abs(b)))
}

// TestDistMatchesOneProcess: 2 ranks × batch 2 train as 1 process ×
// batch 4: each step's shards together are the one process's batch
// (rank 1's empty when the epoch's last batch has one example), the
// losses, gradient norms and eval losses agree to float32 rounding (sums
// in another order: 1e-6 relative), both ranks end with the same adapter,
// and only rank 0 writes the run folder.
func TestDistMatchesOneProcess(t *testing.T) {
	const n, steps = 9, 7 // 3 steps an epoch, the third of 1 example
	one := splitConfig(t, n, 4, steps)
	one.Eval, one.EvalEvery, one.SaveEvery = fakeData(t, 7), 3, 2
	alone := runRanks(t, []Config{one}, nil, nil)[0]
	if alone.err != nil {
		t.Fatal(alone.err)
	}
	var cfgs []Config
	for range 2 {
		c := splitConfig(t, n, 2, steps)
		c.Eval, c.EvalEvery, c.SaveEvery = fakeData(t, 7), 3, 2
		cfgs = append(cfgs, c)
	}
	ranks := runRanks(t, cfgs, nil, nil)
	for r, rr := range ranks {
		if rr.err != nil {
			t.Fatalf("rank %d: %v", r, rr.err)
		}
	}
	if len(ranks[0].grad.seen) != steps || len(ranks[1].grad.seen) != steps-2 {
		t.Fatalf("rank 0 ran the gradient graph %d times, rank 1 %d; want %d and %d (rank 1's shard of each epoch's last step is empty)", len(ranks[0].grad.seen), len(ranks[1].grad.seen), steps, steps-2)
	}
	for s, j1 := 0, 0; s < steps; s++ {
		got := append([]int64(nil), ranks[0].grad.seen[s]...)
		if s%3 != 2 {
			got = append(got, ranks[1].grad.seen[j1]...)
			j1++
		}
		if want := alone.grad.seen[s]; !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
			t.Errorf("step %d: the ranks' shards are %v, one process's batch %v", s+1, got, want)
		}
	}
	a0, a1, a := ranks[0].res.Adapter.Layers[0].A[0], ranks[1].res.Adapter.Layers[0].A[0], alone.res.Adapter.Layers[0].A[0]
	if a0 != a1 || !nearRel(float64(a0), float64(a), 1e-6) {
		t.Errorf("final A: rank 0 %v, rank 1 %v, one process %v", a0, a1, a)
	}
	if !nearRel(ranks[0].res.EvalLoss, alone.res.EvalLoss, 1e-6) || ranks[0].res.EvalLoss != ranks[1].res.EvalLoss {
		t.Errorf("eval loss: ranks %v and %v, one process %v", ranks[0].res.EvalLoss, ranks[1].res.EvalLoss, alone.res.EvalLoss)
	}
	rows, want := metricsRows(t, cfgs[0].Run), metricsRows(t, one.Run)
	if len(rows) != steps || len(want) != steps {
		t.Fatalf("metrics.csv: %d rows, one process %d; want %d", len(rows), len(want), steps)
	}
	for i := range rows {
		for _, col := range []string{"loss", "grad_norm", "eval_loss"} {
			g, w := parse(rows[i][col]), parse(want[i][col])
			if !(math.IsNaN(g) && math.IsNaN(w)) && !nearRel(g, w, 1e-6) {
				t.Errorf("step %d %s: %v with 2 ranks, %v alone", i+1, col, g, w)
			}
		}
		for _, col := range []string{"epoch", "lr"} {
			if rows[i][col] != want[i][col] {
				t.Errorf("step %d %s: %v with 2 ranks, %v alone", i+1, col, rows[i][col], want[i][col])
			}
		}
	}
	if entries, _ := os.ReadDir(cfgs[1].Run); len(entries) != 0 {
		t.Errorf("rank 1 wrote into its run folder: %v", entries)
	}
	ck, err := LoadLatest(cfgs[0].Run)
	if err != nil || ck == nil || ck.Progress.World != 2 || ck.Progress.Step != steps {
		t.Fatalf("rank 0's checkpoint: %+v, %v", ck, err)
	}
	if ck1, _ := LoadLatest(one.Run); ck1 == nil || ck1.Progress.World != 0 {
		t.Errorf("a one-process checkpoint records a world size: %+v", ck1)
	}
}

// TestDistResume: a 2-rank run resumed by 2 ranks (rank 1 with an empty
// folder: rank 0 sends it the checkpoint) continues as if uninterrupted;
// resuming with another world size is refused on every rank, naming both.
func TestDistResume(t *testing.T) {
	mk := func(steps int, runs ...string) []Config {
		var cfgs []Config
		for r := range 2 {
			c := splitConfig(t, 9, 2, steps)
			c.Schedule = Schedule{Kind: "constant", LR: 0.1} // the same lr whatever the budget
			if runs != nil {
				c.Run = runs[r]
			}
			cfgs = append(cfgs, c)
		}
		return cfgs
	}
	fullCfgs := mk(7)
	full := runRanks(t, fullCfgs, nil, nil)
	cut := mk(4)
	for r, rr := range runRanks(t, cut, nil, nil) {
		if rr.err != nil {
			t.Fatalf("rank %d: %v", r, rr.err)
		}
	}
	rest := mk(7, cut[0].Run, t.TempDir())
	for i := range rest {
		rest[i].Resume = true
	}
	resumed := runRanks(t, rest, nil, nil)
	for r := range 2 {
		if resumed[r].err != nil || full[r].err != nil {
			t.Fatalf("rank %d: %v, %v", r, resumed[r].err, full[r].err)
		}
		if a, b := resumed[r].res.Adapter.Layers[0].A[0], full[r].res.Adapter.Layers[0].A[0]; a != b {
			t.Errorf("rank %d: resumed A %v, uninterrupted %v", r, a, b)
		}
	}
	a, b := metricsRows(t, rest[0].Run), metricsRows(t, fullCfgs[0].Run)
	if len(a) != 7 || !slices.EqualFunc(a, b, func(x, y map[string]string) bool { return x["loss"] == y["loss"] && x["epoch"] == y["epoch"] }) {
		t.Errorf("resumed metrics differ from the uninterrupted run:\n%v\n%v", a, b)
	}
	alone := splitConfig(t, 9, 4, 9)
	alone.Run, alone.Resume, alone.Schedule = cut[0].Run, true, rest[0].Schedule
	err := runRanks(t, []Config{alone}, nil, nil)[0].err
	if err == nil || !strings.Contains(err.Error(), "the checkpoint was made by 2 ranks, this run has 1") {
		t.Errorf("resuming 2 ranks' checkpoint alone: %v", err)
	}
	three := mk(9, cut[0].Run, t.TempDir())
	three = append(three, three[1])
	three[2].Run = t.TempDir()
	for i := range three {
		three[i].Resume = true
	}
	for r, rr := range runRanks(t, three, nil, nil) {
		want := "made by 2 ranks, this run has 3"
		if r > 0 {
			want = "rank 0 could not start the run"
		}
		if rr.err == nil || !strings.Contains(rr.err.Error(), want) {
			t.Errorf("rank %d of 3 resuming 2 ranks' checkpoint: %v, want %q", r, rr.err, want)
		}
	}
}

// TestDistRefusesOtherData: ranks whose data or seed differ stop before
// training, saying so.
func TestDistRefusesOtherData(t *testing.T) {
	a, b := splitConfig(t, 9, 2, 3), splitConfig(t, 9, 2, 3)
	b.Seed++
	for r, rr := range runRanks(t, []Config{a, b}, nil, nil) {
		if rr.err == nil || !strings.Contains(rr.err.Error(), "data and settings differs from rank 0's") {
			t.Errorf("rank %d: %v", r, rr.err)
		}
	}
}

// TestDistRankFails: a rank whose step fails stops the others at that
// step, with its reason.
func TestDistRankFails(t *testing.T) {
	ranks := runRanks(t, []Config{splitConfig(t, 9, 2, 6), splitConfig(t, 9, 2, 6)}, nil, []*fakeGrad{nil, {failAt: 2}})
	if err := ranks[1].err; err == nil || !strings.Contains(err.Error(), "the gradient graph fails at its run 2") {
		t.Errorf("rank 1: %v", err)
	}
	if err := ranks[0].err; err == nil || !strings.Contains(err.Error(), "rank 1 stopped: step 2: gradient graph: fake: the gradient graph fails") {
		t.Errorf("rank 0: %v", err)
	}
}

// TestDistStopTogether: a rank cancelled in the middle of the run (its
// Ctrl-C) makes every rank stop after the same step, and rank 0
// checkpoints there.
func TestDistStopTogether(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cfgs := []Config{splitConfig(t, 9, 2, 50), splitConfig(t, 9, 2, 50)}
	cfgs[1].OnStep = func(step int) {
		if step == 3 {
			cancel()
		}
	}
	ranks := runRanks(t, cfgs, []context.Context{nil, ctx}, nil)
	for r, rr := range ranks {
		if rr.err != nil || !rr.res.Interrupted {
			t.Fatalf("rank %d: %+v, %v", r, rr.res, rr.err)
		}
	}
	// Rank 1 learns of its cancellation before step 4 and says so in it.
	if ranks[0].res.Steps != 4 || ranks[1].res.Steps != 4 {
		t.Errorf("ranks stopped after steps %d and %d, want 4 and 4", ranks[0].res.Steps, ranks[1].res.Steps)
	}
	if ck, err := LoadLatest(cfgs[0].Run); err != nil || ck == nil || ck.Progress.Step != 4 {
		t.Errorf("rank 0's checkpoint: %+v, %v", ck, err)
	}
	if _, err := os.Stat(filepath.Join(cfgs[1].Run, "checkpoints")); err == nil {
		t.Error("rank 1 wrote a checkpoint")
	}
}

// TestDistChecks: the split step refuses what it does not support yet,
// and more than one rank needs it.
func TestDistChecks(t *testing.T) {
	cfg := splitConfig(t, 9, 2, 3)
	cfg.DeviceState = true
	if _, err := newRunner(cfg); err == nil || !strings.Contains(err.Error(), "device-resident state do not combine yet") {
		t.Errorf("split step with device state: %v", err)
	}
	cfg = fakeConfig(t, 9, 2, 3)
	cfg.Split = true
	if _, err := newRunner(cfg); err == nil || !strings.Contains(err.Error(), "export-train --split-step") {
		t.Errorf("split step without its graphs: %v", err)
	}
}
