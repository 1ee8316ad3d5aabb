package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// wantOrder is the examples n steps of per examples each consume: the
// epoch orders of seed, one after another, a step never crossing an
// epoch's end.
func wantOrder(n, per, steps int, seed uint64) [][]int64 {
	var out [][]int64
	epoch, pos := 0, 0
	for range steps {
		order := dataset.Order(n, seed, epoch)
		end := min(pos+per, n)
		var idx []int64
		for _, i := range order[pos:end] {
			idx = append(idx, int64(i))
		}
		out = append(out, idx)
		if pos = end; pos == n {
			epoch, pos = epoch+1, 0
		}
	}
	return out
}

// TestLoopSteps: each step is fed the next examples of the epoch order,
// the schedule's lr for its number (as float32) and that number, and
// metrics.csv records them.
func TestLoopSteps(t *testing.T) {
	cfg := fakeConfig(t, 5, 2, 6)
	fr := runFake(t, cfg, nil)
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	want := wantOrder(5, 2, 6, cfg.Seed)
	steps := fr.allSteps()
	if len(steps) != 6 || fr.res.Steps != 6 {
		t.Fatalf("%d steps run, result says %d, want 6", len(steps), fr.res.Steps)
	}
	rows := metricsRows(t, cfg.Run)
	sched := cfg.Schedule
	sched.Total = 6
	for i, s := range steps {
		if s.step != float32(i+1) || !slices.Equal(s.idx, want[i]) || s.lr != float32(sched.At(i+1)) {
			t.Errorf("step %d fed step %g, lr %g, examples %v; want lr %g, examples %v", i+1, s.step, s.lr, s.idx, sched.At(i+1), want[i])
		}
		if rows[i]["step"] != fmt.Sprint(i+1) || rows[i]["lr"] != fmtFloat(sched.At(i+1)) {
			t.Errorf("metrics row %d: %v", i+1, rows[i])
		}
	}
	if sched.At(1) != 0 || sched.At(3) != 0.1 {
		t.Errorf("warmup 2 of the linear schedule gives %g, %g at steps 1 and 3", sched.At(1), sched.At(3))
	}
}

// TestLoopGradAccum: with --grad-accum K a step takes K·BatchSize
// examples (the rest at an epoch's end), the epoch position advances by
// as many, and each step's tokens are its examples'.
func TestLoopGradAccum(t *testing.T) {
	cfg := fakeConfig(t, 10, 2, 3)
	cfg.GradAccum = 3
	fr := runFake(t, cfg, nil)
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	want := wantOrder(10, 6, 3, cfg.Seed)
	steps := fr.allSteps()
	for i, s := range steps {
		if !slices.Equal(s.idx, want[i]) {
			t.Errorf("step %d took %v, want %v", i+1, s.idx, want[i])
		}
	}
	if len(steps) != 3 || len(steps[1].idx) != 4 {
		t.Fatalf("want steps of 6, 4 and 6 examples, got %v", steps)
	}
	var epochs []string
	for _, row := range metricsRows(t, cfg.Run) {
		epochs = append(epochs, row["epoch"])
	}
	if !slices.Equal(epochs, []string{"0.0000", "0.6000", "1.0000"}) {
		t.Errorf("epoch column %v", epochs)
	}
	ck, err := LoadLatest(cfg.Run)
	if err != nil || ck == nil {
		t.Fatalf("no final checkpoint: %v", err)
	}
	if p := ck.Progress; p.Step != 3 || p.Epoch != 1 || p.Position != 6 || p.Seed != cfg.Seed {
		t.Errorf("progress after 3 steps of 6 of 10 examples: %+v", p)
	}

	// Token counts of two steps gathered at once, each its own.
	cfg.Run = t.TempDir()
	r, err := newRunner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer r.metrics.Close()
	mb := r.gather(2)
	for j, part := range [][]int{mb.idx[:6], mb.idx[6:]} {
		n := 0
		for _, i := range part {
			n += fakeTokens(i)
		}
		if mb.work[j] != n || n == 0 {
			t.Errorf("step %d of the gather counts %d tokens, its examples %v have %d", j+1, mb.work[j], part, n)
		}
	}
	if len(mb.idx) != 10 || r.prog.Epoch != 1 || r.prog.Position != 0 {
		t.Errorf("two steps of 6 of 10 examples: %d examples, progress %+v", len(mb.idx), r.prog)
	}
}

// TestLoopEvalTokenWeighted: the eval loss is the mean of the batches'
// losses weighted by their tokens, the last batch shorter; it is recorded
// on the steps it ran after, and once more at the end.
func TestLoopEvalTokenWeighted(t *testing.T) {
	cfg := fakeConfig(t, 6, 2, 3)
	cfg.Eval, cfg.EvalEvery = fakeData(t, 5), 2
	fr := runFake(t, cfg, nil)
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	// Evaluations after step 2 and at the end (step 3), in order, batches
	// of 2, 2 and 1.
	wantBatches := [][]int64{{0, 1}, {2, 3}, {4}, {0, 1}, {2, 3}, {4}}
	if !reflect.DeepEqual(fr.eval.batches, wantBatches) {
		t.Fatalf("eval batches %v, want %v", fr.eval.batches, wantBatches)
	}
	a := fr.res.Adapter.Layers[0].A[0]
	var sum, weight, plain float64
	for _, b := range wantBatches[3:] {
		var s int64
		tok := 0
		for _, i := range b {
			s += i
			tok += fakeTokens(int(i))
		}
		loss := float64(a + float32(s)/float32(len(b)))
		sum, weight, plain = sum+loss*float64(tok), weight+float64(tok), plain+loss/3
	}
	if !near(fr.res.EvalLoss, sum/weight) || near(sum/weight, plain) {
		t.Errorf("eval loss %g, want the token-weighted %g (the plain mean is %g)", fr.res.EvalLoss, sum/weight, plain)
	}
	var evals []bool
	for _, row := range metricsRows(t, cfg.Run) {
		evals = append(evals, row["eval_loss"] != "")
	}
	if !slices.Equal(evals, []bool{false, true, false}) {
		t.Errorf("eval_loss filled on rows %v, want step 2 only", evals)
	}
}

// kStepCase is a K-step run compared with single steps.
type kStepCase struct {
	name                        string
	n, batch, accum, k, steps   int
	multiRuns, singleRuns       int
	saveEvery, evalEvery        int
	wantSavesK, wantSavesSingle []int // the checkpoints seen after each step
	wantEvalRowsK               []int
}

// TestLoopKStepBoundary: with StepsPerRun K, K-step runs are used only
// where K full micro-batches remain in the epoch and the budget, and the
// steps get the examples, lr and step numbers of single steps; the loss,
// lr, gradient-norm and epoch columns are the same; a checkpoint or
// evaluation due inside a K-step run happens at its end, the evaluation
// recorded on its last step.
func TestLoopKStepBoundary(t *testing.T) {
	for _, c := range []kStepCase{
		// Steps 1-4 and 5-8 as runs; 9 and 10 finish epoch 0; 11 is the last of the budget.
		{name: "epoch end and budget", n: 10, batch: 1, accum: 1, k: 4, steps: 11, multiRuns: 2, singleRuns: 3,
			saveEvery: 3, evalEvery: 5, wantSavesK: []int{4, 8, 9}, wantSavesSingle: []int{3, 6, 9}, wantEvalRowsK: []int{8, 10}},
		// 4 examples a step: runs 1-2 and 4-5, each followed by a single
		// step of the epoch's last 2 examples; 7 alone is the budget's last.
		{name: "grad accum", n: 10, batch: 2, accum: 2, k: 2, steps: 7, multiRuns: 2, singleRuns: 3,
			saveEvery: 2, evalEvery: 0, wantSavesK: []int{2, 5, 6}, wantSavesSingle: []int{2, 4, 6}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var saves [2][]int
			var runs [2]*fakeRun
			var rows [2][]map[string]string
			for i, k := range []int{1, c.k} {
				cfg := fakeConfig(t, c.n, c.batch, c.steps)
				cfg.GradAccum, cfg.SaveEvery, cfg.EvalEvery = c.accum, c.saveEvery, c.evalEvery
				if c.evalEvery > 0 {
					cfg.Eval = fakeData(t, 3)
				}
				cfg.IO = fakeIO(t, k)
				cfg.OnStep = func(int) {
					if ck, err := LoadLatest(cfg.Run); err == nil && ck != nil && !slices.Contains(saves[i], ck.Progress.Step) {
						saves[i] = append(saves[i], ck.Progress.Step)
					}
				}
				if runs[i] = runFake(t, cfg, nil); runs[i].err != nil {
					t.Fatal(runs[i].err)
				}
				rows[i] = metricsRows(t, cfg.Run)
			}
			single, multi := runs[0], runs[1]
			if multi.multi.runs != c.multiRuns || multi.train.runs != c.singleRuns {
				t.Errorf("%d K-step and %d single runs, want %d and %d", multi.multi.runs, multi.train.runs, c.multiRuns, c.singleRuns)
			}
			if !reflect.DeepEqual(single.allSteps(), multi.allSteps()) {
				t.Errorf("K-step runs fed\n%v\nsingle steps\n%v", multi.allSteps(), single.allSteps())
			}
			var evalRows []int
			for s := range rows[0] {
				for _, col := range []string{"step", "epoch", "loss", "lr", "grad_norm"} {
					if rows[0][s][col] != rows[1][s][col] {
						t.Errorf("row %d: %s %s with single steps, %s with K-step runs", s+1, col, rows[0][s][col], rows[1][s][col])
					}
				}
				if rows[1][s]["eval_loss"] != "" {
					evalRows = append(evalRows, s+1)
				}
			}
			if len(rows[0]) != c.steps || len(rows[1]) != c.steps {
				t.Errorf("%d and %d metrics rows, want %d", len(rows[0]), len(rows[1]), c.steps)
			}
			if !slices.Equal(evalRows, c.wantEvalRowsK) {
				t.Errorf("K-step run records evaluations on steps %v, want %v", evalRows, c.wantEvalRowsK)
			}
			if !slices.Equal(saves[0], c.wantSavesSingle) || !slices.Equal(saves[1], c.wantSavesK) {
				t.Errorf("checkpoints at steps %v (single) and %v (K-step), want %v and %v", saves[0], saves[1], c.wantSavesSingle, c.wantSavesK)
			}
			if single.res.Loss != multi.res.Loss || single.res.Adapter.Layers[0].A[0] != multi.res.Adapter.Layers[0].A[0] {
				t.Errorf("results differ: loss %g vs %g", single.res.Loss, multi.res.Loss)
			}
		})
	}
}

// TestLoopNonFinite: a NaN loss stops the run with ErrNonFinite naming the
// step, without applying it (or the rest of its K-step run), pointing at
// the last good checkpoint.
func TestLoopNonFinite(t *testing.T) {
	for _, c := range []struct {
		k, bad    int
		want      string
		wantSaved int
	}{
		{k: 1, bad: 3, want: "step 3: loss is not finite (loss NaN, gradient norm 2); stopped without applying it, last good checkpoint: ", wantSaved: 2},
		{k: 4, bad: 6, want: "step 6: loss is not finite (loss NaN, gradient norm 2); stopped without applying steps 5..8, last good checkpoint: ", wantSaved: 4},
	} {
		t.Run(fmt.Sprint("k=", c.k), func(t *testing.T) {
			cfg := fakeConfig(t, 20, 2, 10)
			cfg.IO, cfg.SaveEvery = fakeIO(t, c.k), 2
			fr := runFake(t, cfg, map[int]float32{c.bad: float32(math.NaN())})
			ck, err := LoadLatest(cfg.Run)
			if err != nil || ck == nil {
				t.Fatalf("no checkpoint kept: %v", err)
			}
			want := c.want + filepath.Join(cfg.Run, "checkpoints", fmt.Sprintf("step-%08d", c.wantSaved))
			if !errors.Is(fr.err, ErrNonFinite) || fr.err.Error() != want {
				t.Fatalf("got  %v\nwant %s", fr.err, want)
			}
			if ck.Progress.Step != c.wantSaved {
				t.Errorf("latest checkpoint is step %d, want %d", ck.Progress.Step, c.wantSaved)
			}
			rows := metricsRows(t, cfg.Run)
			if len(rows) != c.wantSaved {
				t.Errorf("metrics.csv has %d rows after stopping at step %d", len(rows), c.bad)
			}
		})
	}
}

// TestLoopResume: a run interrupted after 4 steps and resumed takes up its
// progress, params and optimizer state, and ends where an uninterrupted
// run ends; a resume with another seed, or without a checkpoint, is
// refused.
func TestLoopResume(t *testing.T) {
	full := fakeConfig(t, 6, 2, 7)
	ffr := runFake(t, full, nil)
	if ffr.err != nil {
		t.Fatal(ffr.err)
	}
	cut := full
	cut.Run = t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cut.OnStep = func(step int) {
		if step == 4 {
			cancel()
		}
	}
	if fr := runFakeCtx(t, ctx, cut, nil); fr.err != nil || !fr.res.Interrupted || fr.res.Steps != 4 {
		t.Fatalf("interrupting at step 4: %v, %+v", fr.err, fr.res)
	}
	cut.OnStep, cut.Resume = nil, true
	r, err := newRunner(cut)
	if err != nil {
		t.Fatal(err)
	}
	r.metrics.Close()
	if want := (Progress{Step: 4, Epoch: 1, Position: 2, Seed: 7, Examples: 6, Data: cut.Data.Fingerprint()}); r.prog != want {
		t.Errorf("resumed at %+v, want %+v", r.prog, want)
	}
	fr := runFake(t, cut, nil)
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	if !reflect.DeepEqual(fr.allSteps(), ffr.allSteps()[4:]) {
		t.Errorf("the resumed run fed\n%v\nthe uninterrupted one\n%v", fr.allSteps(), ffr.allSteps()[4:])
	}
	a, b := metricsRows(t, full.Run), metricsRows(t, cut.Run)
	for _, rows := range [][]map[string]string{a, b} {
		for _, row := range rows {
			delete(row, "tokens_per_s")
			delete(row, "padded_tokens_per_s")
		}
	}
	if !reflect.DeepEqual(a, b) || len(a) != 7 {
		t.Errorf("metrics differ:\n%v\n%v", a, b)
	}
	fck, err1 := LoadLatest(full.Run)
	cck, err2 := LoadLatest(cut.Run)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !reflect.DeepEqual(fck.State, cck.State) || !reflect.DeepEqual(fck.Adapter.Layers, cck.Adapter.Layers) || fck.Progress != cck.Progress {
		t.Errorf("final checkpoints differ: %+v vs %+v", fck.Progress, cck.Progress)
	}

	cut.Seed = 8
	if fr := runFake(t, cut, nil); fr.err == nil || fr.err.Error() != "resume: the checkpoint was made with --seed 7, not 8" {
		t.Errorf("resume with another seed: %v", fr.err)
	}
	empty := full
	empty.Run, empty.Resume = t.TempDir(), true
	if fr := runFake(t, empty, nil); fr.err == nil || !strings.Contains(fr.err.Error(), "has no checkpoint") {
		t.Errorf("resume without a checkpoint: %v", fr.err)
	}
}

// TestPerParamStateCompat: a checkpoint from before the optimizer ran on
// all params at once holds "<param>.adam_m" per param; resume assembles
// the state vector from them in the entry's order, and refuses when one
// is missing.
func TestPerParamStateCompat(t *testing.T) {
	saved := map[string]runtime.Tensor{
		"b.adam_m": runtime.FloatTensor([]int64{1, 2}, []float32{3, 4}),
		"a.adam_m": runtime.FloatTensor([]int64{1}, []float32{1}),
	}
	e := trainio.Entry{Name: "adam_m", DType: "float32", Role: trainio.RoleState, Parts: []string{"a", "b"}}
	v, ok := perParamState(saved, e)
	got, err := v.Floats()
	if !ok || err != nil || !reflect.DeepEqual(got, []float32{1, 3, 4}) || !reflect.DeepEqual(v.Shape, []int64{3}) {
		t.Errorf("assembled %v %v (%v, %v)", got, v.Shape, ok, err)
	}
	e.Parts = append(e.Parts, "c")
	if _, ok := perParamState(saved, e); ok {
		t.Error("assembled a state with a part missing")
	}
}

// TestMetricsResumeOlderRows: resuming a run whose metrics.csv predates
// the padded column keeps its rows (given an empty padded field) and
// still plots them.
func TestMetricsResumeOlderRows(t *testing.T) {
	run := t.TempDir()
	old := "step,epoch,loss,lr,grad_norm,tokens_per_s,eval_loss\n1,0.1,2.5,0.1,1,100.0,\n2,0.2,2.0,0.1,1,100.0,\n3,0.3,1.5,0.1,1,100.0,\n"
	if err := os.WriteFile(filepath.Join(run, "metrics.csv"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := openMetrics(run, 2, true, "tokens")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(row{step: 3, epoch: 0.3, loss: 1.4, lr: 0.1, gradNorm: 1, tokensPerS: 90, evalLoss: math.NaN(), paddedPerS: 120}); err != nil {
		t.Fatal(err)
	}
	if err := m.Plot(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	rows := metricsRows(t, run)
	if len(rows) != 3 || rows[0]["padded_tokens_per_s"] != "" || rows[2]["padded_tokens_per_s"] != "120.0" || rows[2]["loss"] != "1.4" {
		t.Errorf("rows %v", rows)
	}
}
