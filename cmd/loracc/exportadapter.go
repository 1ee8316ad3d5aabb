package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
	"github.com/urfave/cli/v2"
)

func exportAdapterCommand() *cli.Command {
	return &cli.Command{
		Name:  "export-adapter",
		Usage: "write a PEFT adapter as ONNX Runtime's .onnx_adapter, for models injected with --adapter-inputs",
		UsageText: "export-adapter ADAPTER_DIR [--model LORA.onnx] [--adapter-version N] [-o OUT.onnx_adapter]\n\n" +
			"ORT feeds the file's tensors to the model inputs of the same names when the adapter is active\n" +
			"(Python: a = onnxruntime.LoraAdapter(); a.Load(path); run_options.add_active_adapter(a)),\n" +
			"so one loaded model switches adapters per run without reloading.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Usage: "the model injected with --adapter-inputs: checks names and shapes, takes its dtype and folds any difference between the adapter's scale and the model's into B"},
			&cli.StringFlag{Name: "names", Value: "peft", Usage: "without --model: peft (<target>.lora_A, B unscaled, for models loracc injected) or genai (<target>.lora_A.MatMul.weight, scale folded into B, as onnxruntime-genai and Olive name them); with --model, the names the model takes"},
			&cli.IntFlag{Name: "adapter-version", Value: 1, Usage: "adapter_version recorded in the file"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "output file (default: ADAPTER_DIR without a trailing .adapter, plus .onnx_adapter)"},
		},
		Action: func(c *cli.Context) error {
			dir, err := onePositional(c, "ADAPTER_DIR")
			if err != nil {
				return err
			}
			a, err := adapter.Load(dir)
			if err != nil {
				return err
			}
			out := c.String("output")
			if out == "" {
				out = strings.TrimSuffix(strings.TrimRight(dir, "/"), ".adapter") + ".onnx_adapter"
			}
			var m *graph.Model
			if p := c.String("model"); p != "" {
				if m, err = graph.Load(p); err != nil {
					return err
				}
			}
			o, sig, done, err := outputSet(c, c.String("model"), m, dir)
			if err != nil {
				return err
			}
			defer done()
			var genai bool
			switch n := c.String("names"); n {
			case "peft":
			case "genai":
				genai = true
			default:
				return fmt.Errorf("--names %q: want peft or genai", n)
			}
			params, err := ortAdapterParams(a, m, genai)
			if err != nil {
				return fmt.Errorf("%s: %w", dir, err)
			}
			data, err := adapter.EncodeORTAdapter(params, c.Int("adapter-version"), 1)
			if err != nil {
				return fmt.Errorf("%s: %w", out, err)
			}
			if err := o.Create(out, func(w io.Writer) error {
				_, err := w.Write(data)
				return err
			}); err != nil {
				return outputErr(sig, "export-adapter", err)
			}
			if err := o.Commit(); err != nil {
				return outputErr(sig, "export-adapter", err)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s (%d tensors)\n", out, len(params))
			return nil
		},
	}
}

// ortAdapterParams lays the adapter out as the injected model's inputs
// (branch.Params: lora_Aᵀ [in, r], lora_Bᵀ [r, out]), with B scaled by
// adapter scale / model scale when a model is given. Under
// onnxruntime-genai's names (genai, or a model that takes them) B carries
// the adapter's scale, divided by any scale the model multiplies by, and a
// layer named as Hugging Face names it (self_attn) finds the genai
// builder's module (attn).
func ortAdapterParams(a *adapter.Adapter, m *graph.Model, genai bool) ([]adapter.NamedTensor, error) {
	var out []adapter.NamedTensor
	for _, l := range a.Layers {
		ps := branch.Params(l)
		dt := graph.Float
		scale := a.Config.Scale(l.Name)
		if m != nil {
			genai = false
			for _, name := range []string{l.Name, strings.ReplaceAll(l.Name, ".self_attn.", ".attn.")} {
				if m.Graph.Lookup(branch.GenaiAName(name)) != nil && m.Graph.Lookup(ps[0].Name) == nil {
					genai = true
					l.Name = name
					break
				}
			}
		}
		if genai && m == nil {
			// The builder names every attention module attn.
			l.Name = strings.ReplaceAll(l.Name, ".self_attn.", ".attn.")
		}
		if genai {
			// onnxruntime-genai's contract: B carries the whole scale
			// unless the model multiplies by a scale of its own (below).
			ps[0].Name, ps[1].Name = branch.GenaiAName(l.Name), branch.GenaiBName(l.Name)
			s := float32(scale)
			for i := range ps[1].Data {
				ps[1].Data[i] *= s
			}
		}
		if m != nil {
			for _, p := range ps {
				v := m.Graph.Lookup(p.Name)
				if v == nil || !v.IsGraphInput() {
					return nil, fmt.Errorf("the model has no input %q (inject it with --adapter-inputs)", p.Name)
				}
				if v.Type == nil || len(v.Type.Shape) != 2 || v.Type.Shape[0].Value != p.Shape[0] || v.Type.Shape[1].Value != p.Shape[1] {
					return nil, fmt.Errorf("model input %q is not [%d, %d]", p.Name, p.Shape[0], p.Shape[1])
				}
				dt = v.Type.DType
			}
			if s := m.Graph.Lookup(branch.ScaleName(l.Name)); s != nil && s.Const != nil {
				vals, err := s.Const.Floats()
				if err != nil || len(vals) != 1 || vals[0] == 0 {
					return nil, fmt.Errorf("bad scale %q in the model", s.Name)
				}
				ratio := float32(scale / float64(vals[0]))
				if genai {
					ratio = 1 / vals[0] // B holds scale·B already
				}
				for i := range ps[1].Data {
					ps[1].Data[i] *= ratio
				}
			}
		}
		for _, p := range ps {
			raw, err := graph.EncodeFloats(dt, p.Data)
			if err != nil {
				return nil, err
			}
			out = append(out, adapter.NamedTensor{Name: p.Name, DType: dt, Shape: p.Shape, Data: raw})
		}
	}
	return out, nil
}
