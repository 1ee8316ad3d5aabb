package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/urfave/cli/v2"
)

func injectCommand() *cli.Command {
	return &cli.Command{
		Name:  "inject",
		Usage: "insert LoRA branches next to MatMul/Gemm nodes and write the adapter",
		UsageText: "inject MODEL.onnx --rank R [--alpha A] [--target RE]... [--exclude RE]... [--rank-pattern RE=R]... " +
			"[--alpha-pattern RE=A]... [--init kaiming|gaussian|zeros] [--seed N] [--adapter-inputs] [-o OUT.onnx] [--adapter DIR]",
		Flags: append(selectorFlags(),
			&cli.IntFlag{Name: "rank", Aliases: []string{"r"}, Value: 8, Usage: "LoRA rank r (the whole adapter may not exceed the weights it adapts; see --allow-large-rank)"},
			&cli.BoolFlag{Name: "allow-large-rank", Usage: "allow an adapter up to 16× the weights it adapts"},
			&cli.Float64Flag{Name: "alpha", Usage: "lora_alpha; the branch is scaled by alpha/r (default: the rank, scale 1)"},
			&cli.StringSliceFlag{Name: "rank-pattern", Usage: "RE=R: rank R for targets whose name matches RE (PEFT's rank_pattern)"},
			&cli.StringSliceFlag{Name: "alpha-pattern", Usage: "RE=A: alpha A for matching targets (PEFT's alpha_pattern)"},
			&cli.StringFlag{Name: "init", Value: "kaiming", Usage: "kaiming (PEFT's default: A uniform ±1/√in, B=0), gaussian (A ~ N(0, (1/r)²), B=0) or zeros"},
			&cli.Uint64Flag{Name: "seed", Value: 0, Usage: "random seed for the initial adapter"},
			&cli.BoolFlag{Name: "adapter-inputs", Usage: "make lora_A/lora_B graph inputs, so one loaded model serves any adapter"},
			&cli.StringFlag{Name: "adapter-names", Value: "auto", Usage: "with --adapter-inputs: peft (<target>.lora_A, .lora_B and a graph scale alpha/r) or genai (<target>.lora_A.MatMul.weight, .lora_B.MatMul.weight with the scale folded into B, as onnxruntime-genai's Adapters API and Olive feed them); auto: genai for a model in an onnxruntime-genai folder"},
			&cli.StringFlag{Name: "branch-dtype", Value: "base", Usage: "for fp16/bf16 targets: compute the branch in the base's type (base) or in float32 (float32)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output model (default: MODEL.lora.onnx)"},
			&cli.StringFlag{Name: "adapter", Usage: "adapter directory to write (default: OUT without .onnx plus .adapter)"},
			&cli.StringFlag{Name: "from-adapter", Usage: "inject this PEFT adapter (its layers, values, rank and alpha) instead of a new one; layers are matched to targets by module path, suffix or weight name"},
			&cli.BoolFlag{Name: "dump", Usage: "print the graph after each pass"},
		),
		Action: injectAction,
	}
}

// outputPath puts "<base>.<suffix>.onnx" next to the input.
func outputPath(in, suffix string) string {
	return strings.TrimSuffix(in, ".onnx") + "." + suffix + ".onnx"
}

func adapterDir(out string) string {
	return strings.TrimSuffix(out, ".onnx") + ".adapter"
}

func parsePatterns(c *cli.Context, flag string, parse func(string) (float64, error)) (map[string]float64, error) {
	out := map[string]float64{}
	for _, p := range c.StringSlice(flag) {
		i := strings.LastIndex(p, "=")
		if i <= 0 {
			return nil, fmt.Errorf("--%s %q: want RE=VALUE", flag, p)
		}
		v, err := parse(p[i+1:])
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %w", flag, p, err)
		}
		out[p[:i]] = v
	}
	return out, nil
}

func injectConfig(c *cli.Context) (adapter.Config, error) {
	rank := c.Int("rank")
	if rank <= 0 {
		return adapter.Config{}, fmt.Errorf("--rank %d: must be positive", rank)
	}
	alpha := float64(rank)
	if c.IsSet("alpha") {
		if err := checkFloats(c, floatRule{"alpha", float32OK, "must be a finite number (the scale alpha/r is stored as float32)"}); err != nil {
			return adapter.Config{}, err
		}
		alpha = c.Float64("alpha")
	}
	cfg := adapter.NewConfig(rank, alpha)
	ranks, err := parsePatterns(c, "rank-pattern", func(s string) (float64, error) {
		r, err := strconv.Atoi(s)
		if err == nil && r <= 0 {
			err = fmt.Errorf("rank must be positive")
		}
		return float64(r), err
	})
	if err != nil {
		return cfg, err
	}
	for k, v := range ranks {
		if cfg.RankPattern == nil {
			cfg.RankPattern = map[string]int{}
		}
		cfg.RankPattern[k] = int(v)
	}
	alphas, err := parsePatterns(c, "alpha-pattern", func(s string) (float64, error) {
		a, err := strconv.ParseFloat(s, 64)
		if err == nil && (math.IsNaN(a) || !float32OK(a)) {
			err = fmt.Errorf("alpha must be a finite number")
		}
		return a, err
	})
	if err != nil {
		return cfg, err
	}
	for k, v := range alphas {
		if cfg.AlphaPattern == nil {
			cfg.AlphaPattern = map[string]float64{}
		}
		cfg.AlphaPattern[k] = v
	}
	return cfg, cfg.Validate()
}

func injectAction(c *cli.Context) error {
	in, err := modelArg(c, "MODEL.onnx")
	if err != nil {
		return err
	}
	sel, err := selector(c)
	if err != nil {
		return err
	}
	cfg, err := injectConfig(c)
	if err != nil {
		return err
	}
	var from *adapter.Adapter
	if dir := c.String("from-adapter"); dir != "" {
		for _, f := range []string{"rank", "alpha", "rank-pattern", "alpha-pattern", "init", "seed", "target", "exclude"} {
			if c.IsSet(f) {
				return fmt.Errorf("--%s and --from-adapter conflict: the adapter decides which layers and values", f)
			}
		}
		if from, err = adapter.Load(dir); err != nil {
			return err
		}
	}
	out := c.String("output")
	if out == "" {
		out = outputPath(in, "lora")
	}
	dir := c.String("adapter")
	if dir == "" {
		dir = adapterDir(out)
	}
	if err := checkOutputs(out); err != nil {
		return err
	}
	m, err := graph.Load(in)
	if err != nil {
		return err
	}
	var adapters []string
	if from != nil {
		adapters = append(adapters, c.String("from-adapter"))
	}
	o, sig, done, err := outputSet(c, in, m, adapters...)
	if err != nil {
		return err
	}
	defer done()
	genaiNames, err := adapterNames(c, in)
	if err != nil {
		return err
	}
	logf := logger(c)
	ctx := &rewrite.Context{
		Lora: lora.Options{
			Selector: sel, Config: cfg, AdapterInputs: c.Bool("adapter-inputs"), AllowLargeRank: c.Bool("allow-large-rank"),
			KeepPacked: c.Bool("keep-packed"),
			Init:       lora.Init{Method: c.String("init"), Seed: c.Uint64("seed")},
			Adapter:    from,
			GenaiNames: genaiNames,
		},
		Logf: logf,
	}
	switch c.String("branch-dtype") {
	case "base":
	case "float32":
		ctx.Lora.BranchFP32 = true
	default:
		return fmt.Errorf("--branch-dtype %q: want base or float32", c.String("branch-dtype"))
	}
	if c.Bool("dump") {
		ctx.Dump = dumper(c)
	}
	if err := rewrite.Run(m, ctx, "unpack", "inject"); err != nil {
		return adapterErr(in, c.String("from-adapter"), err)
	}
	// The model and the adapter are one output set: a failure in either
	// leaves neither.
	if err := o.Save(m, out, graph.SaveOptions{Notef: logf}); err != nil {
		return outputErr(sig, "inject", err)
	}
	if err := o.CreateDir(dir, ctx.Lora.Adapter.Save); err != nil {
		return outputErr(sig, "inject", err)
	}
	if err := o.Commit(); err != nil {
		return outputErr(sig, "inject", err)
	}
	var params int64
	for _, l := range ctx.Lora.Adapter.Layers {
		params += int64(l.Rank * (l.In + l.Out))
	}
	fmt.Fprintf(c.App.Writer, "injected %d LoRA branches (%d trainable parameters)\nmodel:   %s\nadapter: %s\n", len(ctx.Lora.Injected), params, out, dir)
	if ctx.Lora.AdapterInputs && genaiNames {
		fmt.Fprintf(c.App.Writer, "adapter tensors are optional graph inputs named as onnxruntime-genai names them: <target>.lora_A.MatMul.weight [in, r] and <target>.lora_B.MatMul.weight [r, out] (the scale folded into B); write .onnx_adapter files for them with loracc export-adapter --model %s\n", out)
	} else if ctx.Lora.AdapterInputs {
		fmt.Fprintf(c.App.Writer, "adapter tensors are optional graph inputs (defaulting to this adapter): feed <target>.lora_A [in, r] and <target>.lora_B [r, out] (the adapter's lora_A/lora_B transposed), or activate an .onnx_adapter from loracc export-adapter, per run\n")
	}
	return nil
}

// checkOutputs fails early on an output folder that does not exist. That
// an output is no input of the run is checked by graph.Outputs, by inode.
func checkOutputs(out string) error {
	dir := filepath.Dir(out)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("output folder %s does not exist", dir)
	}
	return nil
}

// outputSet starts the run's output set with its inputs: the model file
// (when m is not nil) with its external data, and each adapter folder's
// files. The set's context is cancelled by SIGINT or SIGTERM, so that the
// writes stop and the temporary files go instead of the process dying with
// them in place. Callers defer done, which aborts whatever was not
// committed and ends the signal watch.
func outputSet(c *cli.Context, model string, m *graph.Model, adapterDirs ...string) (*graph.Outputs, context.Context, func(), error) {
	sig, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	o := graph.NewOutputs(sig)
	done := func() {
		o.Abort()
		stop()
	}
	var err error
	if m != nil {
		err = o.AddModel(model, m)
	}
	for _, dir := range adapterDirs {
		for _, f := range []string{adapter.ConfigFile, adapter.WeightsFile} {
			if err == nil {
				err = o.AddInput(filepath.Join(dir, f), "input adapter file")
			}
		}
	}
	if err != nil {
		done()
		return nil, nil, nil, err
	}
	return o, sig, done, nil
}

// outputErr names the command, and says so plainly when a signal stopped
// the writes.
func outputErr(sig context.Context, cmd string, err error) error {
	if sig.Err() != nil {
		return fmt.Errorf("%s: interrupted; no output written, previous files unchanged", cmd)
	}
	return fmt.Errorf("%s: %w", cmd, err)
}

func dumper(c *cli.Context) func(string, *graph.Model) {
	return func(pass string, m *graph.Model) {
		fmt.Fprintf(c.App.Writer, "=== after pass %q ===\n%s", pass, graph.Format(m))
	}
}
