package main

import (
	"fmt"
	"os"
	"path/filepath"

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
		UsageText: "fuse MODEL.onnx --adapter DIR [--scale S] [--check] [-o OUT.onnx]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "adapter", Required: true, Usage: "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)"},
			&cli.Float64Flag{Name: "scale", Usage: "use this scale instead of each layer's lora_alpha/r"},
			&cli.StringFlag{Name: "quantized", Value: "requantize", Usage: "for DequantizeLinear weights: requantize (keep the quantized graph; the rounding error is printed) or float (replace by an exact float weight)"},
			&cli.BoolFlag{Name: "check", Usage: "run unfused and fused models in ONNX Runtime on seeded random inputs and compare"},
			&cli.StringFlag{Name: "device", Value: "cpu", Usage: "device for --check: cpu or cuda"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output model (default: MODEL.fused.onnx)"},
			&cli.BoolFlag{Name: "dump", Usage: "print the graph after each pass"},
		},
		Action: fuseAction,
	}
}

func fuseAction(c *cli.Context) error {
	in, err := onePositional(c, "MODEL.onnx")
	if err != nil {
		return err
	}
	out := c.String("output")
	if out == "" {
		out = outputPath(in, "fused")
	}
	if err := checkOutputs(in, out); err != nil {
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
		s := c.Float64("scale")
		ctx.Lora.Scale = &s
	}
	if c.Bool("dump") {
		ctx.Dump = dumper(c)
	}
	if err := rewrite.Run(m, ctx, "strip", "fuse"); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	if err := graph.Save(m, out, graph.SaveOptions{Notef: logf}); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "fused %d adapter layers into %s\n", len(a.Layers), out)
	if !c.Bool("check") {
		return nil
	}
	return fuseCheck(c, in, out, ctx)
}

// fuseCheck builds the unfused model (the input's base with the adapter
// injected) next to the output, runs both in ONNX Runtime on the same
// seeded random inputs and compares every output.
func fuseCheck(c *cli.Context, in, out string, fctx *rewrite.Context) error {
	m, err := graph.Load(in)
	if err != nil {
		return err
	}
	ctx := &rewrite.Context{Lora: lora.Options{Adapter: fctx.Lora.Adapter, Scale: fctx.Lora.Scale}}
	if err := rewrite.Run(m, ctx, "strip", "inject"); err != nil {
		return fmt.Errorf("%s: building the unfused model: %w", in, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".loracc-check-*.onnx")
	if err != nil {
		return err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	if err := graph.Save(m, tmp.Name(), graph.SaveOptions{}); err != nil {
		return err
	}
	env, err := openRuntime(c)
	if err != nil {
		return err
	}
	defer env.Close()
	res, err := compareModels(env, tmp.Name(), out, c.String("device"), 42)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "check: %s\n", res)
	if !res.OK() {
		return fmt.Errorf("check failed: fused and unfused outputs differ beyond tolerance (%s)", res)
	}
	return nil
}
