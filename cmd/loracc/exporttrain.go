package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/trainio"
	"github.com/loracc/loracc/trainstep"
	"github.com/urfave/cli/v2"
)

// trainFlags are the loss and optimizer flags export-train and train
// share; d gives their defaults.
func trainFlags(d trainstep.Options) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "loss", Value: d.Loss, Usage: "lm (next-token cross-entropy on [B,T,V]), ce ([B,C] with labels [B]) or mse"},
		&cli.StringFlag{Name: "logits", Usage: "the model output the loss reads (default: the model's only output)"},
		&cli.StringFlag{Name: "labels", Value: "labels", Usage: "name of the labels input"},
		&cli.Int64Flag{Name: "ignore-index", Value: d.IgnoreIndex, Usage: "label value left out of lm/ce losses"},
		&cli.StringFlag{Name: "optimizer", Value: d.Optimizer, Usage: "adamw or sgd"},
		&cli.Float64Flag{Name: "weight-decay", Value: d.WeightDecay, Usage: "decoupled weight decay (adamw) or L2 term (sgd)"},
		&cli.Float64Flag{Name: "beta1", Value: d.Beta1, Usage: "AdamW β1"},
		&cli.Float64Flag{Name: "beta2", Value: d.Beta2, Usage: "AdamW β2"},
		&cli.Float64Flag{Name: "eps", Value: d.Eps, Usage: "AdamW ε"},
		&cli.Float64Flag{Name: "momentum", Value: d.Momentum, Usage: "SGD momentum"},
		&cli.Float64Flag{Name: "clip-norm", Value: d.ClipNorm, Usage: "clip the adapter gradients' global L2 norm to this (0: off)"},
		&cli.BoolFlag{Name: "emit-grads", Usage: "also output every adapter gradient as <param>.grad (role grad)"},
		&cli.IntFlag{Name: "steps-per-run", Value: 1, Usage: "also compile train_multi.onnx running K steps per run (state crosses host↔device once per K steps)"},
		&cli.StringFlag{Name: "recompute", Value: "none", Usage: "none, or attention, activations and/or loss (comma-separated): the backward recomputes the attention probabilities ([batch, heads, seq, seq] per layer, one more Q·Kᵀ per layer), cheap activations (σ(x), x·σ(x), tanh, gelu, erf, relu) from inputs it keeps anyway, and (loss, with --static) the lm loss's log-probabilities one sequence at a time (one more head product per step), instead of keeping them"},
		&cli.StringFlag{Name: "compute-dtype", Value: "fp32", Usage: "fp32, fp16 or bf16: the type the forward's matrix products and frozen weights use (autocast; adapter, optimizer state, softmax, normalization and loss stay float32). bf16 needs the CUDA provider"},
		&cli.BoolFlag{Name: "split-step", Usage: "also compile grad.onnx and optim.onnx, the step split where the gradients are, as data-parallel training runs it (train: run it on one process too)"},
		&cli.StringFlag{Name: "disable-rewrite", Usage: "comma-separated rewrites to leave out, for bisecting a numerical or placement problem (" + rewriteNames() + ")"},
	}
}

// rewriteNames lists trainstep's optional rewrites, sorted.
func rewriteNames() string {
	names := slices.Sorted(maps.Keys(trainstep.Rewrites()))
	return strings.Join(names, ", ")
}

// disabledRewrites reads --disable-rewrite, refusing unknown names.
func disabledRewrites(c *cli.Context) ([]string, error) {
	var out []string
	known := trainstep.Rewrites()
	for _, name := range strings.Split(c.String("disable-rewrite"), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if _, ok := known[name]; !ok {
			return nil, fmt.Errorf("--disable-rewrite: unknown rewrite %q (known: %s)", name, rewriteNames())
		}
		out = append(out, name)
	}
	return out, nil
}

func trainOptions(c *cli.Context, m *graph.Model) (trainstep.Options, error) {
	o := trainstep.Options{
		Loss: c.String("loss"), Logits: c.String("logits"), Labels: c.String("labels"), IgnoreIndex: c.Int64("ignore-index"),
		Optimizer: c.String("optimizer"), WeightDecay: c.Float64("weight-decay"), Beta1: c.Float64("beta1"), Beta2: c.Float64("beta2"),
		Eps: c.Float64("eps"), Momentum: c.Float64("momentum"), ClipNorm: c.Float64("clip-norm"),
		EmitGrads: c.Bool("emit-grads"), StepsPerRun: c.Int("steps-per-run"),
	}
	if o.Logits == "" {
		if len(m.Graph.Outputs) != 1 {
			var names []string
			for _, v := range m.Graph.Outputs {
				names = append(names, v.Name)
			}
			return o, fmt.Errorf("the model has %d outputs (%s): say which one the loss reads with --logits", len(names), strings.Join(names, ", "))
		}
		o.Logits = m.Graph.Outputs[0].Name
	}
	if err := checkFloats(c, optimizerRules()...); err != nil {
		return o, err
	}
	if err := checkInts(c, intRule{"steps-per-run", 1, "must be ≥ 1"}); err != nil {
		return o, err
	}
	var err error
	if o.Disable, err = disabledRewrites(c); err != nil {
		return o, err
	}
	for _, r := range strings.Split(c.String("recompute"), ",") {
		switch r = strings.TrimSpace(r); r {
		case "none", "":
		case "attention", "activations", "loss":
			o.Recompute = append(o.Recompute, r)
		default:
			return o, fmt.Errorf("--recompute %q: want none, or attention, activations and/or loss (comma-separated)", r)
		}
	}
	if o.ComputeDType, err = trainstep.ComputeDType(c.String("compute-dtype")); err != nil {
		return o, fmt.Errorf("--compute-dtype: %w", err)
	}
	return o, nil
}

// parseDims reads NAME=SIZE pairs separated by commas.
func parseDims(s string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, part := range strings.Split(s, ",") {
		name, size, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.ParseInt(size, 10, 64)
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("%q: want NAME=SIZE, e.g. batch=8", part)
		case err != nil || n <= 0:
			return nil, fmt.Errorf("%q: the size must be a positive integer", part)
		case out[name] != 0:
			return nil, fmt.Errorf("dim %q is given twice", name)
		}
		out[name] = n
	}
	return out, nil
}

func exportTrainCommand() *cli.Command {
	return &cli.Command{
		Name:  "export-train",
		Usage: "compile the training step (forward, loss, gradients, optimizer) and the eval graph as plain ONNX",
		UsageText: "export-train LORA.onnx --loss lm|ce|mse --logits OUTPUT --labels NAME [--ignore-index -100] [--optimizer adamw|sgd] " +
			"[--weight-decay W] [--beta1 B1] [--beta2 B2] [--eps E] [--momentum M] [--clip-norm C] [--dump] [-o DIR]",
		Flags: append(trainFlags(trainstep.DefaultOptions()),
			&cli.StringFlag{Name: "static", Usage: "compile for fixed input dims, e.g. batch=8,seq=512: shape arithmetic is folded at compile time"},
			&cli.IntFlag{Name: "batch-size", Usage: "with --seq-len, instead of --static: the sizes of the first batch input's symbolic batch and sequence dims"},
			&cli.IntFlag{Name: "seq-len", Usage: "see --batch-size"},
			&cli.StringFlag{Name: "provider", Usage: "with --static: cuda uses kernels only ONNX Runtime's CUDA provider has (BiasSoftmax); default: a graph any provider runs"},
			&cli.BoolFlag{Name: "dump", Usage: "print the graph after each pass"},
			&cli.BoolFlag{Name: "memory-report", Usage: "with --static: print the planned peak of live activation bytes of the training step and what holds it"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output folder (default: LORA without .onnx plus .train)"},
		),
		Action: func(c *cli.Context) error {
			in, err := modelArg(c, "LORA.onnx")
			if err != nil {
				return err
			}
			dir := c.String("output")
			if dir == "" {
				dir = strings.TrimSuffix(in, ".onnx") + ".train"
			}
			var dump func(string, *graph.Model)
			if c.Bool("dump") {
				dump = dumper(c)
			}
			var static map[string]int64
			spec := c.String("static")
			switch {
			case c.IsSet("static") && (c.IsSet("batch-size") || c.IsSet("seq-len")):
				return fmt.Errorf("--static and --batch-size/--seq-len both fix dims: give one")
			case c.IsSet("static"):
				var err error
				if static, err = parseDims(spec); err != nil {
					return fmt.Errorf("--static: %w", err)
				}
			case c.IsSet("batch-size") || c.IsSet("seq-len"):
				var err error
				if static, spec, err = batchSeqDims(in, c.Int("batch-size"), c.Int("seq-len")); err != nil {
					return err
				}
			}
			target := c.String("provider")
			switch {
			case target != "" && target != "cuda":
				return fmt.Errorf("--provider %q: want cuda (or leave it out for any provider)", target)
			case target != "" && static == nil:
				return fmt.Errorf("--provider cuda needs --static (its fusions match concrete dims)")
			}
			if c.Bool("memory-report") && static == nil {
				return fmt.Errorf("--memory-report needs --static (a plan needs every size)")
			}
			if static == nil && slices.Contains(strings.Split(c.String("recompute"), ","), "loss") {
				return fmt.Errorf("--recompute loss needs --static (or --batch-size): the loss is chunked by the batch's sequences")
			}
			io, err := exportTrain(in, dir, c, static, target, false, true, dump, logger(c))
			if err != nil {
				return err
			}
			if c.Bool("memory-report") {
				if err := memoryReport(c.App.Writer, filepath.Join(dir, "train.onnx"), spec); err != nil {
					return err
				}
			}
			fmt.Fprintf(c.App.Writer, "wrote %s/train.onnx (%d inputs, %d outputs), %s/eval.onnx and %s/train.json\n",
				dir, len(io.Train.Inputs), len(io.Train.Outputs), dir, dir)
			return nil
		},
	}
}

// TrainIO is train.json.
type TrainIO = trainio.File

// GraphIO lists one compiled graph's inputs and outputs.
type GraphIO = trainio.Graph

// exportTrain compiles train.onnx and eval.onnx (and train_multi.onnx,
// and with split grad.onnx and optim.onnx) from an injected model and
// writes them with train.json as one output set: all files or none, never
// over the model or its data. static, when not empty, fixes those input
// dims (pass specialize). Without eval, eval.onnx is left out: train
// compiles it only for --eval data, since each compiled graph carries its
// own converted copy of the frozen weights (a 7B model's 13 GB in bf16).
func exportTrain(in, dir string, c *cli.Context, static map[string]int64, target string, split, eval bool, dump func(string, *graph.Model), logf func(string, ...any)) (TrainIO, error) {
	var res TrainIO
	sig, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	out := graph.NewOutputs(sig)
	defer out.Abort()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return res, err
	}
	sums := false // the next build compiles the loss as a sum and a count
	build := func(name string, passes ...string) (GraphIO, error) {
		m, err := graph.Load(in)
		if err != nil {
			return GraphIO{}, err
		}
		if err := out.AddModel(in, m); err != nil {
			return GraphIO{}, err
		}
		opts, err := trainOptions(c, m)
		if err != nil {
			return GraphIO{}, fmt.Errorf("%s: %w", in, err)
		}
		opts.Static, opts.Target, opts.Sums = static, target, sums
		ctx := &rewrite.Context{Train: opts, Dump: dump}
		if err := rewrite.Run(m, ctx, passes...); err != nil {
			return GraphIO{}, fmt.Errorf("%s: %s graph: %w", in, name, err)
		}
		m.ProducerName, m.ProducerVersion = "loracc export-train", ""
		if err := out.Save(m, filepath.Join(dir, name+".onnx"), graph.SaveOptions{Notef: logf}); err != nil {
			return GraphIO{}, outputErr(sig, "export-train", err)
		}
		return GraphIO{Inputs: ctx.IO.Inputs, Outputs: ctx.IO.Outputs}, nil
	}
	var err error
	var spec []string // the passes after prune: the static ones, then legalize
	if len(static) > 0 {
		spec = []string{"specialize", "fuse-cuda"}
	}
	spec = append(spec, "legalize", "schedule")
	if res.Train, err = build("train", append([]string{"params", "canonicalize", "autocast", "loss", "autodiff", "optimizer", "prune"}, spec...)...); err != nil {
		return res, err
	}
	if eval {
		if res.Eval, err = build("eval", append([]string{"params", "canonicalize", "autocast", "loss", "prune"}, spec...)...); err != nil {
			return res, err
		}
	}
	if k := c.Int("steps-per-run"); k > 1 {
		if len(static) > 0 {
			return res, fmt.Errorf("--static and --steps-per-run > 1 do not combine yet")
		}
		multi, err := build("train_multi", "params", "canonicalize", "autocast", "loss", "autodiff", "optimizer", "prune", "unroll", "legalize", "schedule")
		if err != nil {
			return res, err
		}
		res.Multi, res.StepsPerRun = &multi, k
	}
	if split || c.Bool("split-step") {
		sums = true
		grad, err := build("grad", append([]string{"params", "canonicalize", "autocast", "loss", "autodiff", "grads", "prune"}, spec...)...)
		if err != nil {
			return res, err
		}
		sums = false
		optim, err := build("optim", "params", "reduced-grads", "optimizer", "prune", "legalize")
		if err != nil {
			return res, err
		}
		res.Grad, res.Optim = &grad, &optim
	}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return res, err
	}
	if err := out.Create(filepath.Join(dir, "train.json"), func(w io.Writer) error {
		_, err := w.Write(append(data, '\n'))
		return err
	}); err != nil {
		return res, outputErr(sig, "export-train", err)
	}
	if err := out.Commit(); err != nil {
		return res, outputErr(sig, "export-train", err)
	}
	return res, nil
}

// batchSeqDims names the dims --batch-size and --seq-len fix: the
// symbolic first and second dims of the model's first input that has a
// symbolic first dim (input_ids [batch, seq] of a language model). It
// returns them as --static would and as its spelling, for messages.
func batchSeqDims(model string, batch, seq int) (map[string]int64, string, error) {
	if batch <= 0 || seq < 0 {
		return nil, "", fmt.Errorf("--batch-size %d, --seq-len %d: want positive sizes", batch, seq)
	}
	m, err := graph.Load(model)
	if err != nil {
		return nil, "", err
	}
	for _, in := range m.Graph.Inputs {
		if in.Const != nil || in.Type == nil || len(in.Type.Shape) == 0 || in.Type.Shape[0].Param == "" {
			continue
		}
		dims := map[string]int64{in.Type.Shape[0].Param: int64(batch)}
		spell := fmt.Sprintf("%s=%d", in.Type.Shape[0].Param, batch)
		if seq > 0 {
			if len(in.Type.Shape) < 2 || in.Type.Shape[1].Param == "" {
				return nil, "", fmt.Errorf("%s: input %q has no symbolic second dim for --seq-len; use --static", model, in.Name)
			}
			dims[in.Type.Shape[1].Param] = int64(seq)
			spell += fmt.Sprintf(",%s=%d", in.Type.Shape[1].Param, seq)
		}
		return dims, spell, nil
	}
	return nil, "", fmt.Errorf("%s: no input has a symbolic batch dim; use --static", model)
}
