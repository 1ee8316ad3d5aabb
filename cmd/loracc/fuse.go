package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/urfave/cli/v2"
)

func fuseCommand() *cli.Command {
	return &cli.Command{
		Name:      "fuse",
		Usage:     "merge an adapter into the base weights (W += scale·A·B)",
		UsageText: "fuse MODEL.onnx --adapter DIR [--scale S] [--check [--check-data FILE.jsonl] [--check-input NAME=VALUES|NAME=D1xD2]...] [-o OUT.onnx]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "adapter", Required: true, Usage: "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"},
			&cli.Float64Flag{Name: "scale", Usage: "use this scale instead of each layer's lora_alpha/r"},
			&cli.StringFlag{Name: "quantized", Value: "requantize", Usage: "for DequantizeLinear weights: requantize (keep the quantized graph; the rounding error is printed) or float (replace by an exact float weight)"},
			&cli.BoolFlag{Name: "check", Usage: "run unfused and fused models in ONNX Runtime on seeded random inputs (or those given below) and compare"},
			&cli.StringFlag{Name: "check-data", Usage: "with --check: take inputs from the first line of this JSONL file (input name → numbers or nested arrays, as train's data)"},
			&cli.StringSliceFlag{Name: "check-input", Usage: "with --check: NAME=V1,V2,... gives an input's values (shaped as declared, or 1-D), NAME=D1xD2 (1-D: Dx) random data of those dims; repeatable"},
			&cli.StringFlag{Name: "device", Value: "cpu", Usage: "device for --check: cpu or cuda"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output model (default: MODEL.fused.onnx); for a model folder, the output folder (default: FOLDER-fused), a copy of the folder with the fused model"},
			&cli.BoolFlag{Name: "dump", Usage: "print the graph after each pass"},
		},
		Action: fuseAction,
	}
}

func fuseAction(c *cli.Context) error {
	arg, err := onePositional(c, "MODEL.onnx")
	if err != nil {
		return err
	}
	in, err := resolveModel(arg)
	if err != nil {
		return err
	}
	out := c.String("output")
	folder := ""
	if in != arg { // a model folder: the output is a copy of the folder
		folder = arg
		outDir := out
		if outDir == "" {
			outDir = filepath.Clean(arg) + "-fused"
		}
		if filepath.Clean(outDir) == filepath.Clean(arg) {
			return fmt.Errorf("fuse: the output folder %s is the input folder; name another with -o", outDir)
		}
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			return fmt.Errorf("fuse: %w", err)
		}
		out = filepath.Join(outDir, filepath.Base(in))
	} else if out == "" {
		out = outputPath(in, "fused")
	}
	if err := checkOutputs(out); err != nil {
		return err
	}
	a, err := adapter.Load(c.String("adapter"))
	if err != nil {
		return err
	}
	m, err := graph.Load(in)
	if err != nil {
		return err
	}
	o, sig, done, err := outputSet(c, in, m, c.String("adapter"))
	if err != nil {
		return err
	}
	defer done()
	logf := logger(c)
	ctx := &rewrite.Context{Lora: lora.Options{Adapter: a}, Logf: logf}
	switch c.String("quantized") {
	case "requantize":
	case "float":
		ctx.Lora.QuantizedToFloat = true
	default:
		return fmt.Errorf("--quantized %q: want requantize or float", c.String("quantized"))
	}
	if c.IsSet("scale") {
		if err := checkFloats(c, floatRule{"scale", float32OK, "must be a finite number"}); err != nil {
			return err
		}
		s := c.Float64("scale")
		ctx.Lora.Scale = &s
	}
	if c.Bool("dump") {
		ctx.Dump = dumper(c)
	}
	if err := rewrite.Run(m, ctx, "unpack", "strip", "fuse", "repack"); err != nil {
		return adapterErr(in, c.String("adapter"), err)
	}
	saveOpts := graph.SaveOptions{Notef: logf}
	if folder != "" { // every weight in one data file named as the input's, as the model builder writes it
		saveOpts.Externalize, saveOpts.DataFile = true, filepath.Base(in)+".data"
	}
	if err := o.Save(m, out, saveOpts); err != nil {
		return outputErr(sig, "fuse", err)
	}
	if folder != "" {
		if err := copyFolderFiles(o, folder, filepath.Dir(out), m, in); err != nil {
			return outputErr(sig, "fuse", err)
		}
	}
	// --check runs the staged output: a model that fails it is never
	// committed, and the previous output stays.
	if c.Bool("check") || c.IsSet("check-data") || c.IsSet("check-input") { // giving inputs asks for the check
		if err := fuseCheck(c, o, in, out, ctx); err != nil {
			if sig.Err() != nil {
				return outputErr(sig, "fuse", err)
			}
			return err
		}
	}
	if err := o.Commit(); err != nil {
		return outputErr(sig, "fuse", err)
	}
	fmt.Fprintf(c.App.Writer, "fused %d adapter layers into %s\n", len(a.Layers), out)
	return nil
}

// adapterErr names the model in a pass error, and the adapter folder too
// when the adapter is what does not fit (the folder is the one to fix).
func adapterErr(model, adapterDir string, err error) error {
	if adapterDir != "" && errors.Is(err, lora.ErrMismatch) {
		return fmt.Errorf("%s: adapter %s: %w", model, adapterDir, err)
	}
	return fmt.Errorf("%s: %w", model, err)
}

// fuseCheck builds the unfused model (the input's base with the adapter
// injected) as a scratch file next to the output, runs it and the staged
// output in ONNX Runtime on the same seeded random inputs and compares
// every output.
func fuseCheck(c *cli.Context, o *graph.Outputs, in, out string, fctx *rewrite.Context) error {
	m, err := graph.Load(in)
	if err != nil {
		return err
	}
	ctx := &rewrite.Context{Lora: lora.Options{Adapter: fctx.Lora.Adapter, Scale: fctx.Lora.Scale}}
	if err := rewrite.Run(m, ctx, "unpack", "strip", "inject"); err != nil {
		return fmt.Errorf("%s: building the unfused model: %w", in, err)
	}
	ref, err := o.SaveTemp(m, filepath.Dir(out))
	if err != nil {
		return err
	}
	got, err := o.Preview(out)
	if err != nil {
		return err
	}
	env, err := openRuntime(c)
	if err != nil {
		return err
	}
	defer env.Close()
	spec, err := parseCheckInputs(c.StringSlice("check-input"), c.String("check-data"))
	if err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	res, err := compareModelsOn(env, ref, got, c.String("device"), 42, spec)
	var bad errInputs
	if errors.As(err, &bad) {
		return fmt.Errorf("%s: --check: %w", in, bad.error)
	}
	if err != nil {
		// The scratch files are gone once the command ends: name the
		// input and the output instead, and say what --check fed them.
		msg := strings.NewReplacer(ref, "the unfused model", got, "the fused "+out).Replace(err.Error())
		if spec.from != "" {
			return fmt.Errorf("%s: --check ran the unfused and fused models on the inputs of %s (random data for the rest) and failed: %s", in, spec.from, msg)
		}
		return fmt.Errorf("%s: --check ran the unfused and fused models on seeded random inputs and failed: %s (random inputs may not be valid for this model: give real ones with --check-data FILE.jsonl or --check-input NAME=VALUES, or fuse without --check)", in, msg)
	}
	fmt.Fprintf(c.App.Writer, "check: %s\n", res)
	if !res.OK() {
		return fmt.Errorf("check failed: fused and unfused outputs differ beyond tolerance (%s); %s not written", res, out)
	}
	return nil
}

// copyFolderFiles copies a model folder's other files (genai_config.json,
// the tokenizer files, ...) into the output folder: everything but the
// model file and the external data files it reads, which the fused model
// replaces.
func copyFolderFiles(o *graph.Outputs, from, to string, m *graph.Model, model string) error {
	skip := map[string]bool{filepath.Base(model): true, filepath.Base(model) + ".data": true}
	for _, v := range m.Graph.Initializers {
		if t := graph.ConstTensor(v); t != nil && t.IsExternal() {
			skip[filepath.Base(t.External().Location)] = true
		}
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if skip[e.Name()] || !e.Type().IsRegular() {
			continue
		}
		data, err := graph.ReadRegular(filepath.Join(from, e.Name()), 1<<30, "a model folder's file")
		if err != nil {
			return err
		}
		if err := o.Create(filepath.Join(to, e.Name()), func(w io.Writer) error {
			_, err := w.Write(data)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}
