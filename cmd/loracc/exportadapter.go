package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/loracc/loracc/adapter"
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
			params, err := ortAdapterParams(a, m)
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

// ortAdapterParams lays the adapter out as the injected model's inputs:
// "<name>.lora_A" = lora_Aᵀ [in, r], "<name>.lora_B" = lora_Bᵀ [r, out],
// with B scaled by adapter scale / model scale when a model is given.
func ortAdapterParams(a *adapter.Adapter, m *graph.Model) ([]adapter.NamedTensor, error) {
	var out []adapter.NamedTensor
	for _, l := range a.Layers {
		at := adapter.Transpose(l.A, l.Rank, l.In)
		bt := adapter.Transpose(l.B, l.Out, l.Rank)
		dt := graph.Float
		if m != nil {
			for _, part := range []struct {
				name string
				dims [2]int
			}{{l.Name + ".lora_A", [2]int{l.In, l.Rank}}, {l.Name + ".lora_B", [2]int{l.Rank, l.Out}}} {
				v := m.Graph.Lookup(part.name)
				if v == nil || !v.IsGraphInput() {
					return nil, fmt.Errorf("the model has no input %q (inject it with --adapter-inputs)", part.name)
				}
				if v.Type == nil || len(v.Type.Shape) != 2 || v.Type.Shape[0].Value != int64(part.dims[0]) || v.Type.Shape[1].Value != int64(part.dims[1]) {
					return nil, fmt.Errorf("model input %q is not [%d, %d]", part.name, part.dims[0], part.dims[1])
				}
				dt = v.Type.DType
			}
			if s := m.Graph.Lookup(l.Name + ".lora_scale"); s != nil && s.Const != nil {
				vals, err := s.Const.Floats()
				if err != nil || len(vals) != 1 || vals[0] == 0 {
					return nil, fmt.Errorf("bad scale %q in the model", s.Name)
				}
				ratio := float32(a.Config.Scale(l.Name) / float64(vals[0]))
				for i := range bt {
					bt[i] *= ratio
				}
			}
		}
		for _, p := range []struct {
			name  string
			shape []int64
			vals  []float32
		}{{l.Name + ".lora_A", []int64{int64(l.In), int64(l.Rank)}, at}, {l.Name + ".lora_B", []int64{int64(l.Rank), int64(l.Out)}, bt}} {
			raw, err := graph.EncodeFloats(dt, p.vals)
			if err != nil {
				return nil, err
			}
			out = append(out, adapter.NamedTensor{Name: p.name, DType: dt, Shape: p.shape, Data: raw})
		}
	}
	return out, nil
}
