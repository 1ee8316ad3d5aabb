package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/dataset"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/progress"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/runtime"
	"github.com/loracc/loracc/runtime/train"
	"github.com/loracc/loracc/trainio"
	"github.com/loracc/loracc/trainstep"
	"github.com/urfave/cli/v2"
)

func trainCommand() *cli.Command {
	d := trainstep.DefaultOptions()
	d.WeightDecay, d.ClipNorm = 0, 1
	return &cli.Command{
		Name:  "train",
		Usage: "train the adapter of an injected model on JSONL data with ONNX Runtime",
		UsageText: "train LORA.onnx --data TRAIN.jsonl [--eval EVAL.jsonl] --loss lm|ce|mse --logits OUTPUT --labels NAME " +
			"[--tokenizer DIR] [--max-length N] [--packing] [--loss-on-prompt] " +
			"[--epochs N | --max-steps N] [--batch-size B] [--grad-accum K] [--lr LR] [--schedule constant|linear|cosine] [--warmup N] " +
			"[--optimizer adamw|sgd] [--weight-decay W] [--clip-norm C] [--seed S] [--device cpu|cuda|auto] [--eval-every N] " +
			"[--save-every N] [--resume] [--fuse] [--nproc-per-node N] [--comm auto|tcp|nccl] [--dist-timeout D] --out RUNDIR",
		Flags: append(append(append(trainFlags(d), textFlags()...),
			&cli.StringFlag{Name: "data", Required: true, Usage: "training examples, JSONL: one object per line mapping input names (and the labels name) to arrays for one example, or text records (lm): {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"}"},
			&cli.StringFlag{Name: "eval", Usage: "evaluation examples, any of the same formats"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "run folder: checkpoints, metrics.csv, loss.png, adapter/"},
			&cli.StringFlag{Name: "adapter", Usage: "starting adapter (default: the injected model's own, from MODEL.adapter/ or its initializers)"},
			&cli.IntFlag{Name: "epochs", Value: 1, Usage: "passes over the data (ignored with --max-steps)"},
			&cli.IntFlag{Name: "max-steps", Usage: "optimizer steps to run"},
			&cli.IntFlag{Name: "batch-size", Value: 8, Usage: "examples per step"},
			&cli.IntFlag{Name: "grad-accum", Value: 1, Usage: "steps see K·batch-size examples (one run of the graph)"},
			&cli.Float64Flag{Name: "lr", Value: 2e-4, Usage: "peak learning rate"},
			&cli.StringFlag{Name: "schedule", Value: "constant", Usage: "constant, linear or cosine (after warmup)"},
			&cli.IntFlag{Name: "warmup", Usage: "steps of linear warmup from 0"},
			&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "seed of the data order"},
			&cli.StringFlag{Name: "device", Value: "auto", Usage: "cpu, cuda or auto (cuda when it works, else cpu)"},
			&cli.StringFlag{Name: "gpu-mem-limit", Usage: "cap ONNX Runtime's CUDA arena at this size, e.g. 40GiB (default: the whole GPU)"},
			&cli.StringFlag{Name: "mem-pattern", Value: "auto", Usage: "auto, on or off: ONNX Runtime's memory pattern for the bound (device-state) and captured steps, one block planned for a step's intermediates; off allocates each value in the arena as it lives. auto: off on CUDA (the arena then holds what is in use, not that plus the first run's allocations: 19.3 instead of 35.0 GiB for the 1B Llama's step, same speed, as captured steps allocate nothing), on on the CPU"},
			&cli.StringFlag{Name: "arena-extend-strategy", Value: "same", Usage: "how the CUDA arena grows: same (by what is requested, ORT's kSameAsRequested) or power-of-two (kNextPowerOfTwo, ORT's default)"},
			&cli.IntFlag{Name: "eval-every", Usage: "evaluate every N steps (and at the end)"},
			&cli.IntFlag{Name: "save-every", Value: 500, Usage: "checkpoint every N steps (and at the end or on Ctrl-C)"},
			&cli.BoolFlag{Name: "resume", Usage: "continue the run in --out from its last checkpoint"},
			&cli.BoolFlag{Name: "fuse", Usage: "also write the fused model to RUNDIR/model.fused.onnx"},
			&cli.Int64Flag{Name: "pad-id", Usage: "token id used to pad lm sequences"},
			&cli.StringFlag{Name: "cuda-graph", Value: "auto", Usage: "with --static: record each step's kernels once and replay them (on, off, or auto: on with cuda)"},
			&cli.StringFlag{Name: "device-state", Value: "auto", Usage: "keep the adapter and optimizer state in device memory between steps: on, off, or auto (on with cuda)"},
			&cli.Float64Flag{Name: "loss-scale-init", Value: 65536, Usage: "with --compute-dtype fp16: the first dynamic loss scale (halved on each overflow, which skips that step; doubled after 2000 clean steps, as PyTorch's GradScaler)"},
			&cli.BoolFlag{Name: "static", Usage: "run every step on a graph compiled for its shapes (no shape work per step; the epoch's short last batch is dropped)"},
			&cli.IntFlag{Name: "pad-to-multiple-of", Value: 64, Usage: "with --static: lm sequences are padded up to a multiple of this, one compiled graph per length"},
			&cli.IntFlag{Name: "max-length", Usage: "the maximum lm sequence length: text records are truncated to it (default: the tokenizer's model_max_length, at most 4096), longer token-id examples are an error; with --static also the longest bucket (default: the longest example's, rounded up)"},
			&cli.StringFlag{Name: "mask-input", Value: "attention_mask", Usage: "model input built as the attention mask for padded lm batches, if the model has it"},
		), distFlags()...),
		Action: trainAction,
	}
}

// trainAction is train alone, as one rank of a data-parallel run (the
// environment says which), or, with --nproc-per-node, the launcher of
// this host's ranks.
func trainAction(c *cli.Context) error {
	if c.Int("nproc-per-node") > 0 {
		return launchRanks(c)
	}
	if err := checkInts(c, intRule{"nproc-per-node", 0, "must be ≥ 1 (0: one process)"}); err != nil {
		return err
	}
	rk, err := joinRanks(c)
	if err != nil {
		return err
	}
	return rk.done(trainRank(c, rk))
}

// trainRank trains, as rank rk of a data-parallel run (nil: alone).
func trainRank(c *cli.Context, rk *rank) error {
	in, err := modelArg(c, "LORA.onnx")
	if err != nil {
		return err
	}
	if err := checkFloats(c, append(optimizerRules(), floatRule{"lr", func(v float64) bool { return v > 0 }, "must be positive"})...); err != nil {
		return err
	}
	if err := checkInts(c,
		intRule{"max-steps", -1, "must be ≥ 0 (0 or -1: run --epochs)"}, intRule{"epochs", 1, "must be ≥ 1"},
		intRule{"batch-size", 1, "must be ≥ 1"}, intRule{"grad-accum", 1, "must be ≥ 1"},
		intRule{"steps-per-run", 1, "must be ≥ 1"}, intRule{"warmup", 0, "must be ≥ 0"},
		intRule{"eval-every", 0, "must be ≥ 0 (0: only at the end)"}, intRule{"save-every", 0, "must be ≥ 0 (0: no periodic checkpoint)"},
		intRule{"max-length", 0, "must be ≥ 0 (0: the tokenizer's for text data, else none)"}); err != nil {
		return err
	}
	run := c.String("out")
	work := rk.workDir(run) // the run folder, or a rank's own
	unlock, err := train.Lock(work)
	if err != nil {
		return err
	}
	defer unlock()
	if !c.Bool("resume") && rk.leader() {
		if _, err := os.Stat(filepath.Join(run, "checkpoints", "latest")); err == nil {
			return fmt.Errorf("%s already holds a run; pass --resume to continue it or choose another --out", run)
		}
	}
	m, err := graph.Load(in)
	if err != nil {
		return err
	}
	start, err := startingAdapter(c, in, m)
	if err != nil {
		return err
	}
	if err := checkRunOutputs(c, in, m, run); err != nil {
		return err
	}
	graphs := filepath.Join(work, "graphs")
	logf := logger(c)
	if !rk.leader() {
		logf = func(string, ...any) {} // rank 0 says it
	}
	split := rk != nil || c.Bool("split-step")
	if !c.Bool("static") && slices.Contains(strings.Split(c.String("recompute"), ","), "loss") {
		return fmt.Errorf("--recompute loss needs --static: the loss is chunked by the batch's sequences")
	}
	io, err := exportTrain(in, graphs, c, nil, "", split, c.String("eval") != "", nil, logf)
	if err != nil {
		return err
	}
	spec := dataset.Spec{Loss: c.String("loss"), Labels: c.String("labels"), PadID: c.Int64("pad-id"), IgnoreIndex: c.Int64("ignore-index"),
		MaxLength: c.Int("max-length"), Text: textOptions(c, in, filepath.Join(work, "data"))}
	spec.Ranges, spec.Classes = dataset.ModelRanges(m.Graph, c.String("logits"))
	for _, e := range io.Train.Inputs {
		if e.Role == trainio.RoleBatch || e.Role == trainio.RoleLabel {
			spec.Inputs = append(spec.Inputs, e)
			if e.Name == c.String("mask-input") && spec.Loss == "lm" {
				spec.MaskInput = e.Name
			}
		}
	}
	data, err := dataset.Load(c.String("data"), spec)
	if err != nil {
		return err
	}
	if st := data.Stats(); st.Format != dataset.FormatIDs {
		logf("%s", describeStats(c.String("data"), st))
	}
	var evalSet *dataset.Set
	if p := c.String("eval"); p != "" {
		if evalSet, err = dataset.Load(p, spec); err != nil {
			return err
		}
		if st := evalSet.Stats(); st.Format != dataset.FormatIDs {
			logf("%s", describeStats(p, st))
		}
	}
	env, err := openRuntime(c)
	if err != nil {
		return err
	}
	defer env.Close()
	if s := c.Float64("loss-scale-init"); !(s >= 1 && s <= math.MaxFloat32) {
		return fmt.Errorf("--loss-scale-init %g: want a finite scale ≥ 1", s)
	}
	device, err := pickDevice(c, env, filepath.Join(graphs, "train.onnx"))
	if err != nil {
		return err
	}
	if dt, _ := trainstep.ComputeDType(c.String("compute-dtype")); dt == graph.BFloat16 && device == "cpu" {
		return fmt.Errorf("--compute-dtype bf16 needs the CUDA provider: ONNX Runtime's CPU provider has no bfloat16 MatMul or Gemm kernels; use --compute-dtype fp16 (or fp32) on the CPU")
	}
	var static *train.Static
	if c.Bool("static") {
		if static, err = staticSteps(c, in, graphs, data, device, logf); err != nil {
			return err
		}
	}
	sessionOpts, err := cudaArena(c, device)
	if err != nil {
		return err
	}
	var deviceState bool
	switch c.String("device-state") {
	case "on":
		deviceState = true
	case "off":
	case "auto":
		deviceState = device == "cuda" && c.Int("steps-per-run") <= 1 && !split
	default:
		return fmt.Errorf("--device-state %q: want on, off or auto", c.String("device-state"))
	}
	var cudaGraph bool
	switch c.String("cuda-graph") {
	case "on":
		if static == nil {
			return fmt.Errorf("--cuda-graph on needs --static (a recorded step replays fixed shapes)")
		}
		cudaGraph = true
	case "off":
	case "auto":
		cudaGraph = static != nil && device == "cuda" && !split
	default:
		return fmt.Errorf("--cuda-graph %q: want on, off or auto", c.String("cuda-graph"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := train.Config{
		Run: work, TrainGraph: filepath.Join(graphs, "train.onnx"), EvalGraph: filepath.Join(graphs, "eval.onnx"), IO: io,
		MultiGraph: filepath.Join(graphs, "train_multi.onnx"),
		Adapter:    start, Data: data, Eval: evalSet,
		Epochs: c.Int("epochs"), MaxSteps: c.Int("max-steps"), BatchSize: c.Int("batch-size"), GradAccum: c.Int("grad-accum"),
		Schedule: train.Schedule{Kind: c.String("schedule"), LR: c.Float64("lr"), Warmup: c.Int("warmup")},
		Seed:     c.Uint64("seed"), Session: sessionOpts,
		EvalEvery: c.Int("eval-every"), SaveEvery: c.Int("save-every"), Resume: c.Bool("resume"),
		Static: static, DeviceState: deviceState, CUDAGraph: cudaGraph, CUDAGraphRequired: c.String("cuda-graph") == "on",
		LossScaleInit: c.Float64("loss-scale-init"),
		Out:           c.App.ErrWriter, Terminal: isTerminal(c.App.ErrWriter),
		Split: split, GradGraph: filepath.Join(graphs, "grad.onnx"), OptimGraph: filepath.Join(graphs, "optim.onnx"),
	}
	if err := rk.configure(c, &cfg, device); err != nil {
		return err
	}
	if rk.leader() {
		how := device
		if rk != nil {
			how = fmt.Sprintf("%s, %d ranks × batch %d", device, rk.launch.World, cfg.BatchSize)
		}
		fmt.Fprintf(c.App.Writer, "training %d adapter layers on %d examples (%s, %s)\n", len(start.Layers), data.Len(), c.String("data"), how)
	}
	res, err := train.Run(ctx, env, cfg)
	if err != nil {
		if device == "cuda" && outOfMemory(err) {
			return fmt.Errorf("%s: the GPU ran out of memory; train a smaller batch (--batch-size, with --grad-accum for the same examples per step), shorter sequences (--max-length), in 16 bits (--compute-dtype bf16), recomputing the attention probabilities (--recompute attention) or without ORT's memory pattern (--mem-pattern off), or cap the arena with --gpu-mem-limit to share the GPU: %w", run, err)
		}
		return fmt.Errorf("%s: %w", run, err)
	}
	if res.Interrupted || !rk.leader() {
		return nil
	}
	adir := filepath.Join(run, "adapter")
	if err := saveRunOutputs(c, in, m, func(o *graph.Outputs) error { return o.CreateDir(adir, res.Adapter.Save) }); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "trained %d steps: loss %.6g", res.Steps, res.Loss)
	if res.EvalLoss == res.EvalLoss {
		fmt.Fprintf(c.App.Writer, ", eval loss %.6g", res.EvalLoss)
	}
	fmt.Fprintf(c.App.Writer, "\nadapter: %s\nmetrics: %s, %s\n", adir, filepath.Join(run, "metrics.csv"), filepath.Join(run, "loss.png"))
	if c.Bool("fuse") {
		fused := filepath.Join(run, "model.fused.onnx")
		fm, err := graph.Load(in)
		if err != nil {
			return err
		}
		if err := rewrite.Run(fm, &rewrite.Context{Lora: lora.Options{Adapter: res.Adapter}, Logf: logf}, "unpack", "strip", "fuse", "repack"); err != nil {
			return fmt.Errorf("%s: %w", in, err)
		}
		if err := saveRunOutputs(c, in, m, func(o *graph.Outputs) error { return o.Save(fm, fused, graph.SaveOptions{Notef: logf}) }); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "fused model: %s\n", fused)
	}
	return nil
}

// runOutputs starts an output set of the run that knows its inputs: the
// model and its data, the data files and the starting adapter.
func runOutputs(c *cli.Context, in string, m *graph.Model) (*graph.Outputs, context.Context, func(), error) {
	var adapters []string
	if dir := c.String("adapter"); dir != "" {
		adapters = append(adapters, dir)
	}
	o, sig, done, err := outputSet(c, in, m, adapters...)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, f := range []string{"data", "eval"} {
		if p := c.String(f); p != "" {
			if err := o.AddInput(p, "input data file"); err != nil {
				done()
				return nil, nil, nil, err
			}
		}
	}
	return o, sig, done, nil
}

// checkRunOutputs refuses, before training, the files train writes at its
// end (the adapter, the fused model) where they would land on an input.
func checkRunOutputs(c *cli.Context, in string, m *graph.Model, run string) error {
	o, _, done, err := runOutputs(c, in, m)
	if err != nil {
		return err
	}
	defer done()
	adir := filepath.Join(run, "adapter")
	paths := []string{filepath.Join(adir, adapter.ConfigFile), filepath.Join(adir, adapter.WeightsFile)}
	if c.Bool("fuse") {
		paths = append(paths, filepath.Join(run, "model.fused.onnx"))
	}
	if err := o.Check(paths...); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	return nil
}

// saveRunOutputs writes what stage stages as one output set.
func saveRunOutputs(c *cli.Context, in string, m *graph.Model, stage func(*graph.Outputs) error) error {
	o, sig, done, err := runOutputs(c, in, m)
	if err != nil {
		return err
	}
	defer done()
	if err := stage(o); err != nil {
		return outputErr(sig, "train", err)
	}
	if err := o.Commit(); err != nil {
		return outputErr(sig, "train", err)
	}
	return nil
}

// startingAdapter is --adapter, else the adapter directory inject wrote
// beside the model, else the values the model's branches hold.
func startingAdapter(c *cli.Context, in string, m *graph.Model) (*adapter.Adapter, error) {
	if err := branch.Trainable(m.Graph); err != nil {
		return nil, fmt.Errorf("%s: %w", in, err)
	}
	dir := c.String("adapter")
	if dir == "" {
		if st, err := os.Stat(adapterDir(in)); err == nil && st.IsDir() {
			dir = adapterDir(in)
		}
	}
	if dir == "" {
		return branch.Adapter(m, nil)
	}
	a, err := adapter.Load(dir)
	if err != nil {
		return nil, err
	}
	// The adapter must fit the model's branches, or the first step fails
	// deep inside ONNX Runtime.
	inModel, err := branch.Adapter(m, nil)
	if err != nil {
		return nil, err
	}
	for _, l := range inModel.Layers {
		al := a.Layer(l.Name)
		if al == nil {
			return nil, fmt.Errorf("%s: no layer %q for the model's branch of that name", dir, l.Name)
		}
		if al.Rank != l.Rank || al.In != l.In || al.Out != l.Out {
			return nil, fmt.Errorf("%s: layer %q is rank %d [in=%d, out=%d], but the model's branch is rank %d [in=%d, out=%d]", dir, l.Name, al.Rank, al.In, al.Out, l.Rank, l.In, l.Out)
		}
	}
	if len(a.Layers) != len(inModel.Layers) {
		return nil, fmt.Errorf("%s: %d layers, but the model has %d branches", dir, len(a.Layers), len(inModel.Layers))
	}
	return a, nil
}

// pickDevice resolves --device: auto tries CUDA and falls back to the CPU
// with a one-line notice saying why.
func pickDevice(c *cli.Context, env *runtime.Env, model string) (string, error) {
	d := c.String("device")
	switch d {
	case "cpu", "cuda":
		return d, nil
	case "auto":
		s, err := env.NewSession(model, runtime.SessionOptions{Device: "cuda"})
		if err != nil {
			fmt.Fprintf(c.App.ErrWriter, "note: CUDA is not available (%v); training on the CPU\n", firstLine(err.Error()))
			return "cpu", nil
		}
		s.Close()
		return "cuda", nil
	}
	return "", fmt.Errorf("--device %q: want cpu, cuda or auto", d)
}

func firstLine(s string) string {
	for i, r := range s {
		if r == '\n' {
			return s[:i]
		}
	}
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && progress.IsTerminal(f)
}

// staticSteps sets up train --static: the buckets sequence lengths are
// padded to (multiples of --pad-to-multiple-of up to --max-length) and a
// compiler of the step for one of them, into RUNDIR/graphs/static-L/,
// with the batch dim fixed at batch size × grad accum.
func staticSteps(c *cli.Context, in, graphs string, data *dataset.Set, device string, logf func(string, ...any)) (*train.Static, error) {
	if c.Int("steps-per-run") > 1 {
		return nil, fmt.Errorf("--static and --steps-per-run > 1 do not combine yet")
	}
	multiple, maxLen := c.Int("pad-to-multiple-of"), c.Int("max-length")
	if multiple <= 0 {
		return nil, fmt.Errorf("--pad-to-multiple-of %d: must be positive", multiple)
	}
	longest := 0
	for i := range data.Len() {
		longest = max(longest, data.SeqLen(i))
	}
	roundUp := func(n int) int { return (n + multiple - 1) / multiple * multiple }
	if maxLen == 0 {
		maxLen = roundUp(longest)
	}
	if maxLen < 0 {
		return nil, fmt.Errorf("--max-length %d: must be positive", maxLen)
	}
	batchDim, seqDim := data.DimNames()
	if batchDim == "" {
		return nil, fmt.Errorf("--static: the model's batch dim is already fixed; nothing to specialise")
	}
	rows := int64(c.Int("batch-size") * max(c.Int("grad-accum"), 1))
	return &train.Static{
		Bucket: func(n int) (int, error) {
			if n > maxLen {
				return 0, fmt.Errorf("an example has %d tokens, more than --max-length %d", n, maxLen)
			}
			if seqDim == "" {
				return 0, nil
			}
			return min(roundUp(max(n, 1)), maxLen), nil
		},
		Graph: func(seqLen int) (string, trainio.Graph, error) {
			dims := map[string]int64{batchDim: rows}
			if seqDim != "" {
				dims[seqDim] = int64(seqLen)
			}
			dir := filepath.Join(graphs, fmt.Sprintf("static-%d", seqLen))
			logf("compiling the step for %d × %d into %s", rows, seqLen, dir)
			target := ""
			if device == "cuda" {
				target = "cuda" // the step runs there only: its CUDA fusions apply
			}
			io, err := exportTrain(in, dir, c, dims, target, false, c.String("eval") != "", nil, logf)
			if err != nil {
				return "", trainio.Graph{}, err
			}
			return filepath.Join(dir, "train.onnx"), io.Train, nil
		},
	}, nil
}

// cudaArena reads --gpu-mem-limit and --arena-extend-strategy into the
// session options of a run on device.
func cudaArena(c *cli.Context, device string) (runtime.SessionOptions, error) {
	o := runtime.SessionOptions{Device: device}
	switch c.String("arena-extend-strategy") {
	case "same":
		o.ArenaExtend = "kSameAsRequested"
	case "power-of-two":
		o.ArenaExtend = "kNextPowerOfTwo"
	default:
		return o, fmt.Errorf("--arena-extend-strategy %q: want same or power-of-two", c.String("arena-extend-strategy"))
	}
	switch c.String("mem-pattern") {
	case "auto":
		o.NoMemPattern = device == "cuda"
	case "on":
	case "off":
		o.NoMemPattern = true
	default:
		return o, fmt.Errorf("--mem-pattern %q: want auto, on or off", c.String("mem-pattern"))
	}
	if s := c.String("gpu-mem-limit"); s != "" {
		n, err := parseBytes(s)
		if err != nil {
			return o, fmt.Errorf("--gpu-mem-limit: %w", err)
		}
		o.GPUMemLimit = n
	}
	return o, nil
}

// parseBytes reads a size: a whole number of bytes, or a number with a
// unit KiB, MiB, GiB (powers of 1024) or KB, MB, GB (of 1000).
func parseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		scale  float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	scale := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, scale = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.scale
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || v <= 0 || v*scale > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q: want a positive size such as 40GiB or 38000MiB", s)
	}
	return int64(v * scale), nil
}

// outOfMemory reports whether err is ONNX Runtime failing to allocate
// device memory (its arena's or CUDA's own message).
func outOfMemory(err error) bool {
	m := strings.ToLower(err.Error())
	return strings.Contains(m, "out of memory") || strings.Contains(m, "failed to allocate memory") || strings.Contains(m, "bfcarena")
}
