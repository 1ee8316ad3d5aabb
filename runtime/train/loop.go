package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"

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

	// Static, when set, runs every step on a graph compiled for its
	// shapes (static.go); TrainGraph then serves no step.
	Static *Static
	// CUDAGraph runs each static step graph as a captured step
	// (captured.go); it needs Static. A step ORT cannot record (a node
	// it does not place on CUDA, say) runs uncaptured, said in one line,
	// unless CUDAGraphRequired.
	CUDAGraph         bool
	CUDAGraphRequired bool
	// DeviceState keeps the adapter params and optimizer state in the
	// session's device memory between steps (device.go); only the loss and
	// gradient norm cross to the host each step. Not with StepsPerRun > 1.
	DeviceState bool
	// LossScaleInit is the first loss scale of a step compiled with
	// --compute-dtype fp16 (scaler.go); 0 means 2¹⁶, GradScaler's default.
	LossScaleInit float64

	// Split runs each step as GradGraph (grad.onnx, IO.Grad) and
	// OptimGraph (optim.onnx, IO.Optim), the gradients summed over Comm's
	// ranks between them (dist.go); TrainGraph then serves no step. It is
	// required with more than one rank and allowed alone.
	Split      bool
	GradGraph  string
	OptimGraph string
	// Comm, with Size() > 1, makes this process one rank of a
	// data-parallel run: it trains on its shard of each step's examples,
	// and only rank 0 writes the run folder (dist.go). nil: alone.
	Comm Communicator

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
	// Memory sums the step sessions' device allocator statistics (ORT's
	// names: MaxInUse, TotalAllocated, ...); nil on the CPU or when a
	// session kept none.
	Memory map[string]int64
}

// ErrNonFinite is returned (wrapped) when a step's loss or gradient norm
// is NaN or Inf, or its updated adapter or optimizer state holds one.
var ErrNonFinite = errors.New("not finite")

// runner is one run in progress: its graphs, the params and optimizer
// state they update, and where it stands in the data.
type runner struct {
	cfg     Config
	total   int // the step budget
	single  stepGraph
	multi   *stepGraph // nil: no K-step graph
	eval    graphRunner
	params  Params
	state   map[string]runtime.Tensor
	prog    Progress
	order   []int
	bar     *progress.Bar
	metrics *metricsFile
	// buckets are the static-shape step graphs opened so far, by
	// sequence length; open opens one (Config.Static).
	buckets map[int]*stepGraph
	open    openFunc
	// dev holds the params and state in device memory when the step graph
	// is bound (device.go); stale says the host copies are older; fetcher
	// copies dev to the host.
	dev     map[string]*runtime.DeviceValue
	stale   bool
	fetcher boundRunner
	// holder is the captured step whose buffers hold the current params
	// and state (captured.go), nil when the host or dev holds them.
	holder capturedRunner
	// uncapture turns a step whose recording failed into an unrecorded
	// one (Run sets it).
	uncapture func(g *stepGraph, why error) error
	// ctx is the loop's; a rank reports its cancellation in the step's
	// all-reduce, and stopAll says some rank did (dist.go).
	ctx     context.Context
	stopAll bool
}

// Run trains until the step budget is spent or ctx is cancelled (then it
// writes a checkpoint and returns with Interrupted set, no error).
func Run(ctx context.Context, env *runtime.Env, cfg Config) (*Result, error) {
	// The sessions are opened on the thread the loop runs them on (see
	// loop).
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	defer r.metrics.Close()
	cfg = r.cfg
	var opened []*runtime.Session
	defer func() {
		for _, s := range opened {
			s.Close()
		}
	}()
	var bound []*runtime.BoundSession
	var captured []*runtime.CapturedStep
	defer func() {
		r.releaseDevice() // before the sessions that hold the memory
		for _, s := range bound {
			s.Close()
		}
		for _, c := range captured {
			c.Close()
		}
	}()
	uncaptured := false // a step could not be recorded: later buckets do not try again
	// The bound step sessions of length buckets run in turn, so they share
	// one device arena (runtime.SessionOptions.SharedArena) instead of
	// each holding its own peak; captured steps cannot.
	sharedBuckets := cfg.Static != nil
	r.open = func(g *stepGraph, path string) error {
		g.path = path
		if cfg.CUDAGraph && !uncaptured {
			c, err := env.NewCapturedStep(path, cfg.Session, stepSpec(g.io))
			if err == nil {
				captured = append(captured, c)
				g.captured = c
				return nil
			}
			if cfg.CUDAGraphRequired {
				return err
			}
			uncaptured = true
			fmt.Fprintf(cfg.Out, "cuda graph: the step cannot be recorded, so it runs unrecorded (%s)\n", firstLine(err))
		}
		if cfg.DeviceState {
			so := cfg.Session
			so.SharedArena = sharedBuckets
			s, err := env.NewBoundSession(path, so)
			if err != nil {
				return err
			}
			bound = append(bound, s)
			g.bound = s
			return nil
		}
		s, err := env.NewSession(path, cfg.Session)
		if err != nil {
			return err
		}
		opened = append(opened, s)
		g.sess = s
		return nil
	}
	// uncapture reopens a captured step whose recording failed as an
	// unrecorded one (and stops later buckets from trying), unless
	// recording is required.
	r.uncapture = func(g *stepGraph, why error) error {
		if cfg.CUDAGraphRequired {
			return why
		}
		uncaptured = true
		fmt.Fprintf(cfg.Out, "cuda graph: recording the step failed, so it runs unrecorded (%s)\n", firstLine(why))
		for i, c := range captured {
			if capturedRunner(c) == g.captured {
				c.Close()
				captured = slices.Delete(captured, i, i+1)
				break
			}
		}
		if r.holder == g.captured {
			r.holder = nil
		}
		g.captured = nil
		return r.open(g, g.path)
	}
	switch {
	case cfg.Split:
		grad, err := env.NewSession(cfg.GradGraph, cfg.Session)
		if err != nil {
			return nil, err
		}
		opened = append(opened, grad)
		optim, err := env.NewSession(cfg.OptimGraph, cfg.Session)
		if err != nil {
			return nil, err
		}
		opened = append(opened, optim)
		r.single.split.grad, r.single.split.optim = grad, optim
	case cfg.Static == nil:
		if err := r.open(&r.single, cfg.TrainGraph); err != nil {
			return nil, err
		}
	}
	if cfg.IO.Multi != nil && cfg.IO.StepsPerRun > 1 && cfg.MultiGraph != "" {
		multi, err := env.NewSession(cfg.MultiGraph, cfg.Session)
		if err != nil {
			return nil, err
		}
		defer multi.Close()
		r.multi = &stepGraph{io: *cfg.IO.Multi, sess: multi, k: cfg.IO.StepsPerRun}
	}
	if cfg.Eval != nil {
		eval, err := env.NewSession(cfg.EvalGraph, cfg.Session)
		if err != nil {
			return nil, err
		}
		defer eval.Close()
		r.eval = eval
	}
	res, err := r.loop(ctx)
	if err != nil || cfg.Session.Device != "cuda" || r.rank() != 0 {
		return res, err
	}
	var stats []func() (map[string]int64, error)
	for i, b := range bound {
		if sharedBuckets && i > 0 {
			break // the same arena as the first's
		}
		stats = append(stats, b.MemoryStats)
	}
	for _, c := range captured {
		stats = append(stats, c.MemoryStats)
	}
	res.Memory = sumStats(stats)
	if p := res.Memory["MaxInUse"]; p > 0 {
		sessions := fmt.Sprintf("%d step sessions", len(bound)+len(captured))
		if sharedBuckets && len(bound) > 1 {
			sessions += fmt.Sprintf(", %d sharing one arena", len(bound))
		}
		fmt.Fprintf(cfg.Out, "device memory: peak %.2f GiB in use, %.2f GiB held by ONNX Runtime's arena (%s)\n",
			float64(p)/(1<<30), float64(res.Memory["TotalAllocated"])/(1<<30), sessions)
	}
	return res, writeMemory(cfg.Run, res.Memory)
}

// sumStats adds the statistics of several allocators (one per session,
// or one for the bound sessions that share an arena); one that cannot
// report is left out.
func sumStats(stats []func() (map[string]int64, error)) map[string]int64 {
	var out map[string]int64
	for _, f := range stats {
		m, err := f()
		if err != nil || len(m) == 0 {
			continue
		}
		if out == nil {
			out = map[string]int64{}
		}
		for k, v := range m {
			out[k] += v
		}
	}
	return out
}

// newRunner checks cfg, sets up params and zero optimizer state (or the
// checkpoint's, when resuming) and opens metrics.csv; the caller attaches
// the graphs' sessions, so tests can drive the loop with fakes.
func newRunner(cfg Config) (*runner, error) {
	if cfg.BatchSize <= 0 {
		return nil, fmt.Errorf("batch size %d must be positive", cfg.BatchSize)
	}
	cfg.GradAccum = max(cfg.GradAccum, 1)
	if cfg.Data == nil || cfg.Data.Len() == 0 {
		return nil, fmt.Errorf("no training examples")
	}
	if err := checkDist(cfg); err != nil {
		return nil, err
	}
	perStep := cfg.BatchSize * cfg.GradAccum * worldOf(cfg.Comm)
	stepsPerEpoch := (cfg.Data.Len() + perStep - 1) / perStep
	if cfg.Static != nil {
		// Static shapes drop the short last batch of an epoch.
		if stepsPerEpoch = cfg.Data.Len() / perStep; stepsPerEpoch == 0 {
			return nil, fmt.Errorf("static shapes need at least batch size × grad accum = %d examples, the data has %d", perStep, cfg.Data.Len())
		}
		if cfg.IO.StepsPerRun > 1 {
			return nil, fmt.Errorf("static shapes and steps per run > 1 do not combine yet")
		}
	}
	if cfg.CUDAGraph && cfg.Static == nil {
		return nil, fmt.Errorf("captured steps need static shapes")
	}
	if cfg.DeviceState && cfg.IO.StepsPerRun > 1 {
		return nil, fmt.Errorf("device-resident state and steps per run > 1 do not combine (both keep the state on the device; use one)")
	}
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
	r := &runner{cfg: cfg, total: total, single: stepGraph{io: cfg.IO.Train, k: 1},
		params: FromAdapter(cfg.Adapter), state: map[string]runtime.Tensor{}, prog: Progress{Seed: cfg.Seed, Examples: cfg.Data.Len(), Data: cfg.Data.Fingerprint()}}
	if cfg.Split {
		r.single = stepGraph{io: splitIO(*cfg.IO.Grad, *cfg.IO.Optim), k: 1, split: &splitStep{gradIO: *cfg.IO.Grad, optimIO: *cfg.IO.Optim}}
	}
	if r.world() > 1 {
		r.prog.World = r.world()
	}
	for _, in := range r.stepIO().Inputs {
		if in.Role == trainio.RoleState {
			t, err := zerosFor(in)
			if err != nil {
				return nil, err
			}
			r.state[in.Name] = t
		}
	}
	var err error
	if cfg.Resume && r.rank() == 0 {
		if err = r.resume(); err != nil {
			err = fmt.Errorf("resume: %w", err)
		}
	}
	if r.world() > 1 {
		// Every rank starts from rank 0's params, state and progress
		// (its checkpoint's, when resuming), or from its error.
		err = r.shareStart(err)
	}
	if err != nil {
		return nil, err
	}
	if r.rank() == 0 {
		if r.metrics, err = openMetrics(cfg.Run, r.prog.Step, cfg.Resume, cfg.Data.Unit()); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// resume takes params, optimizer state and progress from the run's latest
// checkpoint, refusing one made with another seed (its data order would
// not continue).
func (r *runner) resume() error {
	ck, err := LoadLatest(r.cfg.Run)
	if err != nil {
		return err
	}
	if ck == nil {
		return fmt.Errorf("%s has no checkpoint", r.cfg.Run)
	}
	if ck.Progress.Seed != r.cfg.Seed {
		return fmt.Errorf("the checkpoint was made with --seed %d, not %d", ck.Progress.Seed, r.cfg.Seed)
	}
	if p := ck.Progress; p.Data != "" && (p.Data != r.prog.Data || p.Examples != r.prog.Examples) {
		return fmt.Errorf("%s: the checkpoint was made on other data (%d examples, %s), not this data (%d examples, %s); resume with the same data file, or start a new run", ck.Dir, p.Examples, p.Data, r.prog.Examples, r.prog.Data)
	}
	if saved := max(ck.Progress.World, 1); saved != r.world() {
		return fmt.Errorf("%s: the checkpoint was made by %d ranks, this run has %d; each rank's shard of the data depends on the world size, so resume with %d (--nproc-per-node or WORLD_SIZE), or start a new run", ck.Dir, saved, r.world(), saved)
	}
	if p := ck.Progress; p.Step < 0 || p.Epoch < 0 || p.Position < 0 || p.Position >= r.cfg.Data.Len() {
		return fmt.Errorf("%s: step %d, epoch %d, position %d do not fit data of %d examples (did the data file change?)", ck.Dir, p.Step, p.Epoch, p.Position, r.cfg.Data.Len())
	}
	if err := checkScaler(ck.Progress); err != nil {
		return fmt.Errorf("%s: %w", ck.Dir, err)
	}
	r.params = FromAdapter(ck.Adapter)
	for _, in := range r.stepIO().Inputs {
		if in.Role != trainio.RoleState {
			continue
		}
		v, ok := ck.State[in.Name]
		if !ok {
			v, ok = perParamState(ck.State, in)
		}
		if !ok {
			return fmt.Errorf("%s lacks optimizer state %q (different optimizer?)", ck.Dir, in.Name)
		}
		if want := r.state[in.Name]; len(v.Data) != len(want.Data) || v.DType != want.DType {
			return fmt.Errorf("%s: optimizer state %q is %s%v, the graph wants %s%v (another adapter?)", ck.Dir, in.Name, v.DType, v.Shape, want.DType, want.Shape)
		}
		r.state[in.Name] = v
	}
	r.prog.Step, r.prog.Epoch, r.prog.Position = ck.Progress.Step, ck.Progress.Epoch, ck.Progress.Position
	r.prog.LossScale, r.prog.Skipped, r.prog.CleanSteps = ck.Progress.LossScale, ck.Progress.Skipped, ck.Progress.CleanSteps
	fmt.Fprintf(r.cfg.Out, "resuming from %s (step %d)\n", ck.Dir, r.prog.Step)
	return nil
}

// perParamState assembles a state vector from a checkpoint that holds one
// state tensor per param ("<param>.adam_m"), as loracc wrote them before
// the optimizer ran on all params at once: the parts concatenated in the
// entry's order.
func perParamState(saved map[string]runtime.Tensor, e trainio.Entry) (runtime.Tensor, bool) {
	if len(e.Parts) == 0 {
		return runtime.Tensor{}, false
	}
	var data []byte
	for _, p := range e.Parts {
		t, ok := saved[p+"."+e.Name]
		if !ok {
			return runtime.Tensor{}, false
		}
		data = append(data, t.Data...)
	}
	return runtime.Tensor{DType: graph.Float, Shape: []int64{int64(len(data) / 4)}, Data: data}, true
}

// loop runs steps until the budget is spent or ctx is cancelled, then
// evaluates (unless the last step did), writes the final checkpoint and
// loss.png.
func (r *runner) loop(ctx context.Context) (*Result, error) {
	// ONNX Runtime's CUDA provider keeps its cuBLAS and cuDNN handles and
	// its recorded CUDA graphs per OS thread. A goroutine moves between
	// threads when it blocks, and a step run from a new thread makes new
	// handles (device memory outside the arena, never freed) and records
	// its graph again after unrecorded warm-up runs: on the H200 the 1B
	// Llama's device memory grew by ~1 GiB over 50 steps and three of its
	// steps ran 6× slower. So every run of a training run's sessions keeps
	// to one thread.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	cfg := r.cfg
	r.bar = progress.New(cfg.Out, r.total, cfg.Terminal).Counting(cfg.Data.Unit())
	res := &Result{EvalLoss: math.NaN()}
	r.ctx = ctx
	for r.prog.Step < r.total {
		// Ranks stop together: a cancelled rank says so in its next
		// step's all-reduce, and every rank stops after that step.
		if r.world() == 1 && ctx.Err() != nil || r.stopAll {
			res.Interrupted = true
			break
		}
		before := r.prog.Step
		g := &r.single
		if r.canRunMulti() {
			g = r.multi
		}
		loss, evalLoss, err := r.runSteps(g)
		if err != nil {
			r.bar.Finish()
			return nil, err
		}
		res.Loss = loss
		if !math.IsNaN(evalLoss) {
			res.EvalLoss = evalLoss
		}
		if crossed(before, r.prog.Step, cfg.SaveEvery) {
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
	var err error
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
	if r.prog.LossScale > 0 {
		fmt.Fprintf(cfg.Out, "float16 loss scaling: %d of %d steps skipped on overflow, loss scale now %g\n", r.prog.Skipped, r.prog.Step, r.prog.LossScale)
	}
	if err := r.syncHost(); err != nil {
		return nil, err
	}
	if res.Adapter, err = ToAdapter(r.params, cfg.Adapter); err != nil {
		return nil, err
	}
	return res, r.metrics.Plot()
}

// crossed reports whether steps after..now passed a multiple of every
// (never when every ≤ 0): a K-step run checkpoints or evaluates once at
// its end for a boundary inside it.
func crossed(before, now, every int) bool {
	return every > 0 && now/every != before/every
}

func (r *runner) checkpoint() error {
	if err := r.syncHost(); err != nil {
		return err
	}
	if r.world() > 1 {
		if err := r.agreeState(); err != nil {
			return err
		}
		if r.rank() != 0 {
			return nil // rank 0 writes the run folder
		}
	}
	if err := r.metrics.Sync(); err != nil {
		return err
	}
	return saveCheckpoint(r.cfg.Run, r.prog, r.params, r.state, r.cfg.Adapter)
}

// evaluate is the token-weighted mean loss over the eval set, in order.
func (r *runner) evaluate() (float64, error) {
	if err := r.syncHost(); err != nil {
		return 0, err
	}
	set := r.cfg.Eval
	var sum, weight float64
	for b, lo := 0, 0; lo < set.Len(); b, lo = b+1, lo+r.cfg.BatchSize {
		if b%r.world() != r.rank() {
			continue // another rank's batch (dist.go sums the ranks' parts)
		}
		var idx []int
		w := 0
		for i := lo; i < min(lo+r.cfg.BatchSize, set.Len()); i++ {
			idx = append(idx, i)
			w += set.Tokens(i)
		}
		batch, err := batchOf(set, idx, 0)
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
	if r.world() > 1 {
		var err error
		if sum, weight, err = r.sumEval(sum, weight); err != nil {
			return 0, err
		}
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
		if d.Symbolic() {
			return runtime.Tensor{}, fmt.Errorf("state %q has a symbolic dim %s", e.Name, d)
		}
		shape[i] = d.Size
		n *= shape[i]
	}
	return runtime.Tensor{DType: dt, Shape: shape, Data: make([]byte, dt.ByteSize(n))}, nil
}

// firstLine is err's message up to its first line break.
func firstLine(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return msg
}

// writeMemory records the run's device memory statistics in
// RUN/memory.json (nothing when there are none): the peak of bytes in
// use (MaxInUse), comparable with PyTorch's max_memory_allocated, and
// what the arenas held (TotalAllocated), comparable with its reserved.
func writeMemory(run string, stats map[string]int64) error {
	if len(stats) == 0 || run == "" {
		return nil
	}
	data, err := json.MarshalIndent(stats, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(run, "memory.json"), append(data, '\n'))
}
