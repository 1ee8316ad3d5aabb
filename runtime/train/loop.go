package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/progress"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/trainio"
)

// Config describes one training run.
type Config struct {
	Run        string // the run folder: checkpoints, metrics.csv, loss.png, adapter/
	TrainGraph string // train.onnx
	EvalGraph  string // eval.onnx
	// MultiGraph is train_multi.onnx (IO.Multi), K steps per run; used
	// whenever K full micro-batches remain in the epoch and the budget.
	MultiGraph string
	IO         trainio.File
	// Adapter is the starting adapter, and the layout checkpoints use.
	Adapter *adapter.Adapter
	Data    *dataset.Set
	Eval    *dataset.Set // nil: no evaluation

	Epochs    int // used when MaxSteps is 0
	MaxSteps  int
	BatchSize int
	// GradAccum K > 1 makes each step see K·BatchSize examples in one
	// run of the graph: the gradient of the mean loss over all of them,
	// which is what accumulating K micro-batches computes, paid for in
	// memory rather than in runs.
	GradAccum int
	Schedule  Schedule // Total is filled in
	Seed      uint64
	Session   runtime.SessionOptions
	EvalEvery int
	SaveEvery int
	Resume    bool

	Out      io.Writer // progress and log lines
	Terminal bool      // Out is a terminal: draw a progress bar
	// OnStep, when set, is called after every step (tests use it to
	// interrupt at a chosen step).
	OnStep func(step int)
}

// Result summarises a finished (or interrupted) run.
type Result struct {
	Steps       int
	Loss        float64 // last step's loss
	EvalLoss    float64 // last evaluation's loss, NaN when none ran
	Adapter     *adapter.Adapter
	Interrupted bool
}

// ErrNonFinite is returned (wrapped) when a step's loss is NaN or Inf.
var ErrNonFinite = errors.New("loss is not finite")

type runner struct {
	cfg     Config
	sess    *runtime.Session
	multi   *runtime.Session
	eval    *runtime.Session
	params  Params
	state   map[string]runtime.Tensor
	outputs []string
	prog    Progress
	order   []int
	bar     *progress.Bar
	metrics *metricsFile
}

// Run trains until the step budget is spent or ctx is cancelled (then it
// writes a checkpoint and returns with Interrupted set, no error).
func Run(ctx context.Context, env *runtime.Env, cfg Config) (*Result, error) {
	if cfg.BatchSize <= 0 {
		return nil, fmt.Errorf("batch size %d must be positive", cfg.BatchSize)
	}
	cfg.GradAccum = max(cfg.GradAccum, 1)
	if cfg.Data == nil || cfg.Data.Len() == 0 {
		return nil, fmt.Errorf("no training examples")
	}
	perStep := cfg.BatchSize * cfg.GradAccum
	stepsPerEpoch := (cfg.Data.Len() + perStep - 1) / perStep
	total := cfg.MaxSteps
	if total <= 0 {
		if cfg.Epochs <= 0 {
			return nil, fmt.Errorf("give --epochs or --max-steps")
		}
		total = cfg.Epochs * stepsPerEpoch
	}
	cfg.Schedule.Total = total
	if err := cfg.Schedule.Validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, params: FromAdapter(cfg.Adapter), state: map[string]runtime.Tensor{}, prog: Progress{Seed: cfg.Seed}}
	for _, o := range cfg.IO.Train.Outputs {
		r.outputs = append(r.outputs, o.Name)
	}
	for _, in := range cfg.IO.Train.Inputs {
		if in.Role == trainio.RoleState {
			t, err := zerosFor(in)
			if err != nil {
				return nil, err
			}
			r.state[in.Name] = t
		}
	}
	if cfg.Resume {
		ck, err := LoadLatest(cfg.Run)
		if err != nil {
			return nil, fmt.Errorf("resume: %w", err)
		}
		if ck == nil {
			return nil, fmt.Errorf("resume: %s has no checkpoint", cfg.Run)
		}
		if ck.Progress.Seed != cfg.Seed {
			return nil, fmt.Errorf("resume: the checkpoint was made with --seed %d, not %d", ck.Progress.Seed, cfg.Seed)
		}
		r.params = FromAdapter(ck.Adapter)
		for k := range r.state {
			v, ok := ck.State[k]
			if !ok {
				return nil, fmt.Errorf("resume: %s lacks optimizer state %q (different optimizer?)", ck.Dir, k)
			}
			r.state[k] = v
		}
		r.prog = ck.Progress
		fmt.Fprintf(cfg.Out, "resuming from %s (step %d)\n", ck.Dir, r.prog.Step)
	}
	var err error
	if r.metrics, err = openMetrics(cfg.Run, r.prog.Step, cfg.Resume); err != nil {
		return nil, err
	}
	defer r.metrics.Close()
	if r.sess, err = env.NewSession(cfg.TrainGraph, cfg.Session); err != nil {
		return nil, err
	}
	defer r.sess.Close()
	if cfg.IO.Multi != nil && cfg.IO.StepsPerRun > 1 && cfg.MultiGraph != "" {
		if r.multi, err = env.NewSession(cfg.MultiGraph, cfg.Session); err != nil {
			return nil, err
		}
		defer r.multi.Close()
	}
	if cfg.Eval != nil {
		if r.eval, err = env.NewSession(cfg.EvalGraph, cfg.Session); err != nil {
			return nil, err
		}
		defer r.eval.Close()
	}
	r.bar = progress.New(cfg.Out, total, cfg.Terminal)
	res := &Result{EvalLoss: math.NaN()}
	for r.prog.Step < total {
		if ctx.Err() != nil {
			res.Interrupted = true
			break
		}
		before := r.prog.Step
		var loss, evalLoss float64
		var err error
		if r.canRunMulti(total) {
			loss, evalLoss, err = r.stepMulti()
		} else {
			loss, evalLoss, err = r.step()
		}
		if err != nil {
			r.bar.Finish()
			return nil, err
		}
		res.Loss = loss
		if !math.IsNaN(evalLoss) {
			res.EvalLoss = evalLoss
		}
		if cfg.SaveEvery > 0 && r.prog.Step/cfg.SaveEvery != before/cfg.SaveEvery {
			if err := r.checkpoint(); err != nil {
				return nil, err
			}
		}
		if cfg.OnStep != nil {
			for s := before + 1; s <= r.prog.Step; s++ {
				cfg.OnStep(s)
			}
		}
	}
	r.bar.Finish()
	if !res.Interrupted && cfg.Eval != nil && (cfg.EvalEvery <= 0 || r.prog.Step%cfg.EvalEvery != 0) {
		if res.EvalLoss, err = r.evaluate(); err != nil {
			return nil, err
		}
		fmt.Fprintf(cfg.Out, "eval loss after step %d: %.6g\n", r.prog.Step, res.EvalLoss)
	}
	if err := r.checkpoint(); err != nil {
		return nil, err
	}
	if res.Interrupted {
		fmt.Fprintf(cfg.Out, "interrupted: checkpoint at step %d written; continue with --resume\n", r.prog.Step)
	}
	res.Steps = r.prog.Step
	if res.Adapter, err = ToAdapter(r.params, cfg.Adapter); err != nil {
		return nil, err
	}
	return res, r.metrics.Plot()
}

func (r *runner) checkpoint() error {
	if err := r.metrics.Sync(); err != nil {
		return err
	}
	return saveCheckpoint(r.cfg.Run, r.prog, r.params, r.state, r.cfg.Adapter)
}

// nextIndices takes the next examples of this epoch's order.
func (r *runner) nextIndices() []int {
	n := r.cfg.Data.Len()
	want := r.cfg.BatchSize * r.cfg.GradAccum
	if r.order == nil {
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
	return idx
}

func toRuntime(b map[string]dataset.Tensor) (map[string]runtime.Tensor, error) {
	out := make(map[string]runtime.Tensor, len(b))
	for k, t := range b {
		dt, err := graph.ParseDataType(t.DType)
		if err != nil {
			return nil, fmt.Errorf("field %q: %w", k, err)
		}
		out[k] = runtime.Tensor{DType: dt, Shape: t.Shape, Data: t.Data}
	}
	return out, nil
}

// batch stacks examples idx of set as runtime tensors.
func batchOf(set *dataset.Set, idx []int) (map[string]runtime.Tensor, error) {
	db, err := set.Batch(idx)
	if err != nil {
		return nil, err
	}
	return toRuntime(db)
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

// feeds maps every input of g to its value: batch and labels, the current
// params and state, and lr and step (scalars for one step, [K] vectors for
// K steps per run).
func (r *runner) feeds(g trainio.Graph, batch map[string]runtime.Tensor, lr, step runtime.Tensor) (map[string]runtime.Tensor, error) {
	feeds := map[string]runtime.Tensor{}
	for _, in := range g.Inputs {
		var v runtime.Tensor
		var ok bool
		switch in.Role {
		case trainio.RoleBatch, trainio.RoleLabel:
			v, ok = batch[in.Name]
		case trainio.RoleParam:
			v, ok = r.params[in.Name]
		case trainio.RoleState:
			v, ok = r.state[in.Name]
		case trainio.RoleLR:
			v, ok = lr, true
		case trainio.RoleStep:
			v, ok = step, true
		}
		if !ok {
			return nil, fmt.Errorf("nothing to feed input %q (role %s)", in.Name, in.Role)
		}
		feeds[in.Name] = v
	}
	return feeds, nil
}

// step runs one optimizer step; it returns the loss and, when this step
// evaluates, the eval loss (else NaN).
func (r *runner) step() (float64, float64, error) {
	start := time.Now()
	epochAt := float64(r.prog.Epoch) + float64(r.prog.Position)/float64(r.cfg.Data.Len())
	idx := r.nextIndices()
	tokens := 0
	for _, i := range idx {
		tokens += r.cfg.Data.Tokens(i)
	}
	batch, err := batchOf(r.cfg.Data, idx)
	if err != nil {
		return 0, 0, err
	}
	step := r.prog.Step + 1
	lr := r.cfg.Schedule.At(step)
	feeds, err := r.feeds(r.cfg.IO.Train, batch, runtime.FloatTensor(nil, []float32{float32(lr)}), runtime.FloatTensor(nil, []float32{float32(step)}))
	if err != nil {
		return 0, 0, err
	}
	out, err := r.sess.Run(feeds, r.outputs)
	if err != nil {
		return 0, 0, fmt.Errorf("step %d: %w", step, err)
	}
	var loss, norm float64
	for _, o := range r.cfg.IO.Train.Outputs {
		switch o.Role {
		case trainio.RoleLoss:
			loss = scalar(out[o.Name])
		case trainio.RoleGradNorm:
			norm = scalar(out[o.Name])
		}
	}
	if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
		last := "none yet"
		if ck, err := LoadLatest(r.cfg.Run); err == nil && ck != nil {
			last = ck.Dir
		}
		return 0, 0, fmt.Errorf("step %d: %w (loss %g, gradient norm %g); stopped without applying it, last good checkpoint: %s", step, ErrNonFinite, loss, norm, last)
	}
	// Only now, with a finite step, take the new params and state.
	r.apply(r.cfg.IO.Train, out)
	r.prog.Step = step
	elapsed := time.Since(start).Seconds()
	tps := float64(tokens) / math.Max(elapsed, 1e-9)
	evalLoss := math.NaN()
	if r.cfg.Eval != nil && r.cfg.EvalEvery > 0 && step%r.cfg.EvalEvery == 0 {
		if evalLoss, err = r.evaluate(); err != nil {
			return 0, 0, err
		}
		r.bar.Log("step %d: eval loss %.6g", step, evalLoss)
	}
	r.bar.Update(step, loss, tps)
	if err := r.metrics.Add(row{step: step, epoch: epochAt, loss: loss, lr: lr, gradNorm: norm, tokensPerS: tps, evalLoss: evalLoss}); err != nil {
		return 0, 0, err
	}
	return loss, evalLoss, nil
}

// evaluate is the token-weighted mean loss over the eval set, in order.
func (r *runner) evaluate() (float64, error) {
	set := r.cfg.Eval
	var sum, weight float64
	for lo := 0; lo < set.Len(); lo += r.cfg.BatchSize {
		var idx []int
		w := 0
		for i := lo; i < min(lo+r.cfg.BatchSize, set.Len()); i++ {
			idx = append(idx, i)
			w += set.Tokens(i)
		}
		batch, err := batchOf(set, idx)
		if err != nil {
			return 0, err
		}
		feeds, err := r.feeds(r.cfg.IO.Eval, batch, runtime.Tensor{}, runtime.Tensor{})
		if err != nil {
			return 0, err
		}
		name := r.cfg.IO.Eval.Outputs[0].Name
		out, err := r.eval.Run(feeds, []string{name})
		if err != nil {
			return 0, fmt.Errorf("eval: %w", err)
		}
		sum += scalar(out[name]) * float64(w)
		weight += float64(w)
	}
	if weight == 0 {
		return math.NaN(), nil
	}
	return sum / weight, nil
}

func scalar(t runtime.Tensor) float64 {
	f, err := t.Floats()
	if err != nil || len(f) != 1 {
		return math.NaN()
	}
	return float64(f[0])
}

// zerosFor makes a zero tensor for a state input of static shape.
func zerosFor(e trainio.Entry) (runtime.Tensor, error) {
	dt, err := graph.ParseDataType(e.DType)
	if err != nil {
		return runtime.Tensor{}, fmt.Errorf("state %q: %w", e.Name, err)
	}
	shape := make([]int64, len(e.Shape))
	n := int64(1)
	for i, d := range e.Shape {
		switch d := d.(type) {
		case float64:
			shape[i] = int64(d)
		case int64:
			shape[i] = d
		case int:
			shape[i] = int64(d)
		default:
			return runtime.Tensor{}, fmt.Errorf("state %q has a symbolic dim %v", e.Name, d)
		}
		n *= shape[i]
	}
	return runtime.Tensor{DType: dt, Shape: shape, Data: make([]byte, dt.ByteSize(n))}, nil
}

// canRunMulti reports whether the next K steps can run as one: the K-step
// graph exists, K steps remain in the budget, and K full micro-batches
// remain in this epoch (the graph splits its batch into K equal parts).
func (r *runner) canRunMulti(total int) bool {
	k := r.cfg.IO.StepsPerRun
	if r.multi == nil || r.prog.Step+k > total {
		return false
	}
	return r.prog.Position+k*r.cfg.BatchSize*r.cfg.GradAccum <= r.cfg.Data.Len()
}

// stepMulti runs K steps in one run of train_multi.onnx. Each step sees
// the same examples as K single steps would; the K micro-batches are
// padded to one length. Evaluation due inside the K steps runs after
// them, and its loss is recorded on the last step.
func (r *runner) stepMulti() (float64, float64, error) {
	k := r.cfg.IO.StepsPerRun
	start := time.Now()
	epochAt := float64(r.prog.Epoch) + float64(r.prog.Position)/float64(r.cfg.Data.Len())
	var idx []int
	tokens := make([]int, k)
	for j := range k {
		part := r.nextIndices()
		for _, i := range part {
			tokens[j] += r.cfg.Data.Tokens(i)
		}
		idx = append(idx, part...)
	}
	batch, err := batchOf(r.cfg.Data, idx)
	if err != nil {
		return 0, 0, err
	}
	first := r.prog.Step + 1
	lrs, steps, lr64 := make([]float32, k), make([]float32, k), make([]float64, k)
	for j := range k {
		lr64[j] = r.cfg.Schedule.At(first + j)
		lrs[j] = float32(lr64[j])
		steps[j] = float32(first + j)
	}
	feeds, err := r.feeds(*r.cfg.IO.Multi, batch, runtime.FloatTensor([]int64{int64(k)}, lrs), runtime.FloatTensor([]int64{int64(k)}, steps))
	if err != nil {
		return 0, 0, err
	}
	var names []string
	for _, o := range r.cfg.IO.Multi.Outputs {
		names = append(names, o.Name)
	}
	out, err := r.multi.Run(feeds, names)
	if err != nil {
		return 0, 0, fmt.Errorf("steps %d..%d: %w", first, first+k-1, err)
	}
	var losses, norms []float32
	for _, o := range r.cfg.IO.Multi.Outputs {
		switch o.Role {
		case trainio.RoleLoss:
			losses, _ = out[o.Name].Floats()
		case trainio.RoleGradNorm:
			norms, _ = out[o.Name].Floats()
		}
	}
	if len(losses) != k || len(norms) != k {
		return 0, 0, fmt.Errorf("steps %d..%d: the graph returned %d losses and %d norms, want %d", first, first+k-1, len(losses), len(norms), k)
	}
	for j := range k {
		l, n := float64(losses[j]), float64(norms[j])
		if math.IsNaN(l) || math.IsInf(l, 0) || math.IsNaN(n) || math.IsInf(n, 0) {
			return 0, 0, fmt.Errorf("step %d: %w (loss %g, gradient norm %g); stopped without applying steps %d..%d", first+j, ErrNonFinite, l, n, first, first+k-1)
		}
	}
	r.apply(*r.cfg.IO.Multi, out)
	r.prog.Step = first + k - 1
	per := time.Since(start).Seconds() / float64(k)
	evalLoss := math.NaN()
	if r.cfg.Eval != nil && r.cfg.EvalEvery > 0 && r.prog.Step/r.cfg.EvalEvery != (first-1)/r.cfg.EvalEvery {
		if evalLoss, err = r.evaluate(); err != nil {
			return 0, 0, err
		}
		r.bar.Log("step %d: eval loss %.6g", r.prog.Step, evalLoss)
	}
	for j := range k {
		ev := math.NaN()
		if j == k-1 {
			ev = evalLoss
		}
		tps := float64(tokens[j]) / math.Max(per, 1e-9)
		r.bar.Update(first+j, float64(losses[j]), tps)
		if err := r.metrics.Add(row{step: first + j, epoch: epochAt, loss: float64(losses[j]), lr: lr64[j], gradNorm: float64(norms[j]), tokensPerS: tps, evalLoss: ev}); err != nil {
			return 0, 0, err
		}
	}
	return float64(losses[k-1]), evalLoss, nil
}
