package train

import (
	"cmp"
	"fmt"
	"math"
	"time"

	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// graphRunner is what the loop needs of an ONNX Runtime session
// (*runtime.Session); the loop's tests put a fake behind it, so schedules,
// batching, evaluation and resumption are tested without ORT.
type graphRunner interface {
	Run(feeds map[string]runtime.Tensor, outputs []string) (map[string]runtime.Tensor, error)
}

// stepGraph is a compiled training graph: k optimizer steps per run, 1 for
// train.onnx (lr and step fed as scalars), IO.StepsPerRun > 1 for
// train_multi.onnx (lr and step as [k] vectors, k micro-batches stacked).
type stepGraph struct {
	io   trainio.Graph
	sess graphRunner
	// bound, when set, runs the graph with params and state kept in
	// device memory (device.go) instead of sess.
	bound boundRunner
	// captured, when set, runs the graph as a captured step (captured.go);
	// recorded says its first run, the recording, succeeded.
	captured capturedRunner
	recorded bool
	// path is the graph's file (a step whose recording fails reopens it).
	path string
	// split, when set, runs the step as a gradient graph and an optimizer
	// graph with the gradients summed over the ranks between them
	// (dist.go); io is then the two graphs' IO as one step's.
	split *splitStep
	k     int
}

// canRunMulti reports whether the next K steps can run as one: the K-step
// graph exists, K steps remain in the budget, and K full micro-batches
// remain in this epoch (the graph splits its batch into K equal parts).
func (r *runner) canRunMulti() bool {
	if r.multi == nil || r.prog.Step+r.multi.k > r.total {
		return false
	}
	return r.prog.Position+r.multi.k*r.cfg.BatchSize*r.cfg.GradAccum <= r.cfg.Data.Len()
}

// microBatches are the examples of k consecutive steps.
type microBatches struct {
	idx    []int     // all k steps' examples, in order
	work   []int     // per step: its work, in the data's Unit (tokens or examples)
	epochs []float64 // per step: the epoch position before it, for metrics.csv
}

// gather takes the next k steps' examples from the epoch order, each step
// BatchSize·GradAccum of them (fewer at an epoch's end).
func (r *runner) gather(k int) microBatches {
	mb := microBatches{work: make([]int, k), epochs: make([]float64, k)}
	for j := range k {
		mb.epochs[j] = float64(r.prog.Epoch) + float64(r.prog.Position)/float64(r.cfg.Data.Len())
		part := r.nextIndices()
		for _, i := range part {
			mb.work[j] += r.cfg.Data.Work(i)
		}
		mb.idx = append(mb.idx, part...)
	}
	return mb
}

// nextIndices takes the next examples of this epoch's order: the next
// global batch (every rank's examples of the step), and of it this rank's
// shard (dataset.Shard).
func (r *runner) nextIndices() []int {
	n := r.cfg.Data.Len()
	want := r.cfg.BatchSize * r.cfg.GradAccum * r.world()
	if r.order == nil {
		r.order = dataset.Order(n, r.prog.Seed, r.prog.Epoch)
	}
	if r.cfg.Static != nil && r.prog.Position+want > n {
		// Static shapes: the short last batch is dropped.
		r.prog.Epoch++
		r.prog.Position = 0
		r.order = dataset.Order(n, r.prog.Seed, r.prog.Epoch)
	}
	end := min(r.prog.Position+want, n)
	idx := r.order[r.prog.Position:end]
	r.prog.Position = end
	if r.prog.Position >= n {
		r.prog.Epoch++
		r.prog.Position = 0
		r.order = nil
	}
	return dataset.Shard(idx, r.rank(), r.world())
}

// runSteps runs g once: g.k optimizer steps, each on the examples, lr and
// step number it would have as a single step. Only when every loss and
// gradient norm is finite does it take the new params and state. An
// evaluation due within the k steps runs after them and is recorded on
// the last. It returns the last loss and the eval loss (NaN when none ran).
func (r *runner) runSteps(g *stepGraph) (float64, float64, error) {
	k := g.k
	start := time.Now()
	first, last := r.prog.Step+1, r.prog.Step+k
	mb := r.gather(k)
	seqLen := 0 // pad to the longest in the batch
	if r.cfg.Static != nil {
		var err error
		if g, seqLen, err = r.staticStep(mb.idx); err != nil {
			return 0, 0, fmt.Errorf("%s: %w", stepSpan(first, last), err)
		}
	}
	var batch map[string]runtime.Tensor // nil for a rank whose shard of the step is empty
	if len(mb.idx) > 0 {
		var err error
		if batch, err = batchOf(r.cfg.Data, mb.idx, seqLen); err != nil {
			return 0, 0, err
		}
	}
	lrs, lr32, step32 := make([]float64, k), make([]float32, k), make([]float32, k)
	for j := range k {
		lrs[j] = r.cfg.Schedule.At(first + j)
		// AdamW's step counts the applied steps (those fp16 loss scaling
		// skipped do not count, scaler.go).
		lr32[j], step32[j] = float32(lrs[j]), float32(first+j-r.prog.Skipped)
	}
	var shape []int64 // a scalar for one step per run
	if k > 1 {
		shape = []int64{int64(k)}
	}
	padded := float64(len(mb.idx)) // the padded work of the k steps: examples, or every label position for lm
	if labels := g.io.ByRole(trainio.RoleLabel); r.cfg.Data.Unit() == "tokens" && len(labels) == 1 && batch != nil {
		n, err := graph.NumElements(batch[labels[0].Name].Shape)
		if err != nil {
			return 0, 0, err
		}
		padded = float64(n)
	}
	lrT, stepT := runtime.FloatTensor(shape, lr32), runtime.FloatTensor(shape, step32)
	var feeds map[string]runtime.Tensor
	if g.split == nil {
		var err error
		if feeds, err = r.feeds(g.io, batch, lrT, stepT); err != nil {
			return 0, 0, err
		}
	}
	var out map[string]runtime.Tensor
	var devOut map[string]*runtime.DeviceValue
	var err error
	switch {
	case g.split != nil:
		out, err = r.runSplit(g.split, batch, lrT, stepT, &mb, &padded)
	case g.captured != nil:
		if out, err = r.runCaptured(g, feeds); err != nil && !g.recorded && r.uncapture != nil {
			// Its first run records the step; a recording ORT refuses
			// there (a kernel that syncs or allocates) leaves the step
			// to run unrecorded, from the host copies of the state,
			// which the failed run did not change.
			if err = r.uncapture(g, err); err == nil {
				if g.bound != nil {
					out, devOut, err = r.runBound(g, feeds)
				} else {
					out, err = g.sess.Run(feeds, outputNames(g.io))
				}
			}
		}
		g.recorded = g.recorded || (err == nil && g.captured != nil)
	case g.bound != nil:
		out, devOut, err = r.runBound(g, feeds)
	default:
		out, err = g.sess.Run(feeds, outputNames(g.io))
	}
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", stepSpan(first, last), err)
	}
	losses, norms, flags, err := lossesOf(g.io, out, k)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", stepSpan(first, last), err)
	}
	sc := newScaler(g.io, &r.prog)
	for j := range k {
		if !finite(losses[j]) || !finite(norms[j]) || flags[j] != 1 {
			for _, d := range devOut {
				d.Close()
			}
			if sc != nil && k == 1 && finite(losses[j]) {
				// An fp16 overflow: skip the step, halve the scale.
				return r.skipStep(sc, mb, first, losses[j], lrs[j], norms[j], start)
			}
			return 0, 0, r.nonFinite(first+j, losses[j], norms[j], flags[j] == 1, first, last)
		}
	}
	if sc != nil {
		sc.clean()
	}
	// Only now, with finite steps, take the new params and state.
	switch {
	case g.captured != nil:
		if err := g.captured.Commit(); err != nil {
			return 0, 0, fmt.Errorf("%s: %w", stepSpan(first, last), err)
		}
		r.stale = true
	case g.bound != nil:
		r.applyBound(g, devOut)
	default:
		r.apply(g.io, out)
	}
	r.prog.Step = last
	per := time.Since(start).Seconds() / float64(k)
	evalLoss := math.NaN()
	if r.cfg.Eval != nil && crossed(first-1, last, r.cfg.EvalEvery) {
		if evalLoss, err = r.evaluate(); err != nil {
			return 0, 0, err
		}
		r.bar.Log("step %d: eval loss %.6g", last, evalLoss)
	}
	for j := range k {
		ev := math.NaN()
		if j == k-1 {
			ev = evalLoss
		}
		tps := float64(mb.work[j]) / math.Max(per, 1e-9)
		r.bar.Update(first+j, losses[j], tps)
		pps := padded / float64(k) / math.Max(per, 1e-9)
		if err := r.metrics.Add(row{step: first + j, epoch: mb.epochs[j], loss: losses[j], lr: lrs[j], gradNorm: norms[j], tokensPerS: tps, evalLoss: ev, paddedPerS: pps}); err != nil {
			return 0, 0, err
		}
	}
	return losses[k-1], evalLoss, nil
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// stepSpan names steps first..last in messages.
func stepSpan(first, last int) string {
	if first == last {
		return fmt.Sprintf("step %d", first)
	}
	return fmt.Sprintf("steps %d..%d", first, last)
}

// nonFinite is the error for a diverged step: it names the step, the
// steps not applied and the checkpoint a user can go back to.
func (r *runner) nonFinite(step int, loss, norm float64, updatesFinite bool, first, last int) error {
	kept := "none yet"
	if ck, err := LoadLatest(r.cfg.Run); err == nil && ck != nil {
		kept = ck.Dir
	}
	dropped := "it"
	if last > first {
		dropped = stepSpan(first, last)
	}
	what := fmt.Errorf("loss is %w (loss %g, gradient norm %g)", ErrNonFinite, loss, norm)
	if finite(loss) && finite(norm) && !updatesFinite {
		what = fmt.Errorf("the updated adapter or optimizer state is %w (loss %g, gradient norm %g; is the learning rate too large?)", ErrNonFinite, loss, norm)
	}
	return fmt.Errorf("step %d: %w; stopped without applying %s, last good checkpoint: %s", step, what, dropped, kept)
}

func outputNames(g trainio.Graph) []string {
	names := make([]string, len(g.Outputs))
	for i, o := range g.Outputs {
		names[i] = o.Name
	}
	return names
}

// lossesOf reads a run's k losses and gradient norms (norms are 0 when the
// graph has none).
// lossesOf reads a run's per-step losses, gradient norms and finite flags
// (1 where every updated param and state value is finite). A graph
// without norms or flags (compiled before they existed) reads as 0 norms
// and finite updates.
func lossesOf(g trainio.Graph, out map[string]runtime.Tensor, k int) (losses, norms, flags []float64, err error) {
	for _, o := range g.Outputs {
		switch o.Role {
		case trainio.RoleLoss:
			losses = floats64(out[o.Name])
		case trainio.RoleGradNorm:
			norms = floats64(out[o.Name])
		case trainio.RoleFinite:
			flags = floats64(out[o.Name])
		}
	}
	if norms == nil && len(g.ByRole(trainio.RoleGradNorm)) == 0 {
		norms = make([]float64, k)
	}
	if flags == nil && len(g.ByRole(trainio.RoleFinite)) == 0 {
		flags = make([]float64, k)
		for i := range flags {
			flags[i] = 1
		}
	}
	if len(losses) != k || len(norms) != k || len(flags) != k {
		return nil, nil, nil, fmt.Errorf("the graph returned %d losses, %d norms and %d finite flags, want %d", len(losses), len(norms), len(flags), k)
	}
	return losses, norms, flags, nil
}

// floats64 widens a float tensor's values (nil when it is not one).
func floats64(t runtime.Tensor) []float64 {
	f, err := t.Floats()
	if err != nil {
		return nil
	}
	out := make([]float64, len(f))
	for i, v := range f {
		out[i] = float64(v)
	}
	return out
}

// apply takes a run's updated params and state.
func (r *runner) apply(g trainio.Graph, out map[string]runtime.Tensor) {
	for _, o := range g.Outputs {
		switch o.Role {
		case trainio.RoleUpdatedParam:
			r.params[o.Replaces] = out[o.Name]
		case trainio.RoleUpdatedState:
			r.state[o.Replaces] = out[o.Name]
		}
	}
}

// feeds maps every input of g to its value: given ones by name (the batch
// and labels; a split step's summed gradients and count), the current
// params and state, and lr and step (scalars for one step, [K] vectors
// for K steps per run).
func (r *runner) feeds(g trainio.Graph, given map[string]runtime.Tensor, lr, step runtime.Tensor) (map[string]runtime.Tensor, error) {
	feeds := map[string]runtime.Tensor{}
	for _, in := range g.Inputs {
		var v runtime.Tensor
		var ok bool
		switch in.Role {
		case trainio.RoleBatch, trainio.RoleLabel, trainio.RoleGrad, trainio.RoleCount:
			v, ok = given[in.Name]
		case trainio.RoleParam:
			v, ok = r.params[in.Name]
		case trainio.RoleState:
			v, ok = r.state[in.Name]
		case trainio.RoleLR:
			v, ok = lr, true
		case trainio.RoleStep:
			v, ok = step, true
		case trainio.RoleLossScale:
			if r.prog.LossScale == 0 {
				r.prog.LossScale = cmp.Or(r.cfg.LossScaleInit, scalerInit)
			}
			v, ok = runtime.FloatTensor(nil, []float32{float32(r.prog.LossScale)}), true
		}
		if !ok {
			return nil, fmt.Errorf("nothing to feed input %q (role %s)", in.Name, in.Role)
		}
		feeds[in.Name] = v
	}
	return feeds, nil
}

// batchOf stacks examples idx of set as runtime tensors.
func batchOf(set *dataset.Set, idx []int, seqLen int) (map[string]runtime.Tensor, error) {
	db, err := set.BatchTo(idx, int64(seqLen))
	if err != nil {
		return nil, err
	}
	out := make(map[string]runtime.Tensor, len(db))
	for k, t := range db {
		dt, err := graph.ParseDataType(t.DType)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", k, err)
		}
		out[k] = runtime.Tensor{DType: dt, Shape: t.Shape, Data: t.Data}
	}
	return out, nil
}

// skipStep ends a step fp16 loss scaling skipped: its batch is consumed,
// nothing is applied, the scale halves, and the metrics row shows the
// step's loss with an infinite gradient norm.
func (r *runner) skipStep(sc *scaler, mb microBatches, step int, loss, lr, norm float64, start time.Time) (float64, float64, error) {
	if err := sc.overflowed(step); err != nil {
		return 0, 0, err
	}
	r.prog.Step = step
	r.bar.Log("step %d: float16 gradients overflowed; step skipped, loss scale now %g", step, r.prog.LossScale)
	tps := float64(mb.work[0]) / math.Max(time.Since(start).Seconds(), 1e-9)
	r.bar.Update(step, loss, tps)
	if err := r.metrics.Add(row{step: step, epoch: mb.epochs[0], loss: loss, lr: lr, gradNorm: math.Inf(1), tokensPerS: tps, evalLoss: math.NaN(), paddedPerS: math.NaN()}); err != nil {
		return 0, 0, err
	}
	return loss, math.NaN(), nil
}
