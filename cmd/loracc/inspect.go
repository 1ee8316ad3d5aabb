package main

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"text/tabwriter"
	"unicode"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/urfave/cli/v2"
)

func selectorFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "target", Usage: "Go regexp searched in target and node names; only matches are adapted (repeatable)"},
		&cli.StringSliceFlag{Name: "exclude", Usage: "Go regexp; matching targets are left alone (repeatable)"},
		&cli.BoolFlag{Name: "keep-packed", Usage: "adapt a packed qkv_proj (onnxruntime-genai's builder packs q, k and v) as one target instead of splitting it into q_proj, k_proj and v_proj targets"},
	}
}

func selector(c *cli.Context) (lora.Selector, error) {
	var s lora.Selector
	compile := func(flag string) ([]*regexp.Regexp, error) {
		var out []*regexp.Regexp
		for _, p := range c.StringSlice(flag) {
			re, err := adapter.CompileRegexp(p)
			if err != nil {
				return nil, fmt.Errorf("--%s %s: %w", flag, adapter.Abbrev(p), err)
			}
			out = append(out, re)
		}
		return out, nil
	}
	var err error
	if s.Include, err = compile("target"); err != nil {
		return s, err
	}
	s.Exclude, err = compile("exclude")
	return s, err
}

type targetJSON struct {
	Name  string `json:"name"`
	Node  string `json:"node"`
	Op    string `json:"op"`
	In    int64  `json:"in"`
	Out   int64  `json:"out"`
	DType string `json:"dtype"`
}

type inspectJSON struct {
	Model            string       `json:"model"`
	Targets          []targetJSON `json:"targets"`
	Skipped          []lora.Skip  `json:"skipped"`
	Rank             int          `json:"rank"`
	BaseParams       int64        `json:"base_params"`
	LoraParams       int64        `json:"lora_params"`
	TrainablePercent float64      `json:"trainable_percent"`
}

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "list the MatMul/Gemm nodes LoRA can adapt and the parameter counts",
		UsageText: "inspect MODEL.onnx [--rank R] [--target RE]... [--exclude RE]... [--json]",
		Flags: append(selectorFlags(),
			&cli.IntFlag{Name: "rank", Value: 8, Usage: "LoRA rank used for the parameter count"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
		),
		Action: func(c *cli.Context) error {
			path, err := modelArg(c, "MODEL.onnx")
			if err != nil {
				return err
			}
			sel, err := selector(c)
			if err != nil {
				return err
			}
			rank := c.Int("rank")
			if rank <= 0 || rank > 1<<31 {
				// The bound keeps rank·(in+out) within int64 for any model.
				return fmt.Errorf("--rank %d: must be between 1 and 2^31", rank)
			}
			m, err := graph.Load(path)
			if err != nil {
				return err
			}
			rep, err := inspect(m, sel, rank, c.Bool("keep-packed"))
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			rep.Model = path
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printInspect(c, rep)
			return nil
		},
	}
}

func inspect(m *graph.Model, sel lora.Selector, rank int, keepPacked bool) (inspectJSON, error) {
	// The targets inject would see (it splits packed q/k/v projections).
	if _, err := lora.Unpack(m, &lora.Options{KeepPacked: keepPacked}); err != nil {
		return inspectJSON{}, err
	}
	all, skips := lora.FindTargets(m)
	chosen, unselected := sel.Select(all)
	rep := inspectJSON{Rank: rank, Targets: []targetJSON{}, Skipped: append(skips, unselected...)}
	for _, t := range chosen {
		rep.Targets = append(rep.Targets, targetJSON{Name: t.Name, Node: t.Node.Name, Op: t.Node.Op, In: t.In, Out: t.Out, DType: t.DType.String()})
		rep.LoraParams += int64(rank) * (t.In + t.Out)
	}
	if rep.Skipped == nil {
		rep.Skipped = []lora.Skip{}
	}
	rep.BaseParams = lora.ParamCounts(m)
	if rep.BaseParams > 0 {
		rep.TrainablePercent = 100 * float64(rep.LoraParams) / float64(rep.BaseParams)
	}
	return rep, nil
}

// shown is a name from the model as the table prints it: one with a
// control character, an escape sequence or any other unprintable rune is
// quoted with Go escapes, so a model cannot move the cursor, recolour or
// retitle the user's terminal, nor break the table with a tab or newline.
func shown(s string) string {
	for _, r := range s {
		if !unicode.IsGraphic(r) || r == '\t' {
			return strconv.QuoteToGraphic(s)
		}
	}
	return s
}

func printInspect(c *cli.Context, rep inspectJSON) {
	w := c.App.Writer
	fmt.Fprintf(w, "%s: %d targets, %d MatMul/Gemm skipped\n\n", rep.Model, len(rep.Targets), len(rep.Skipped))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tNODE\tOP\tIN\tOUT\tDTYPE\tLORA PARAMS")
	for _, t := range rep.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%d\n", shown(t.Name), shown(t.Node), shown(t.Op), t.In, t.Out, t.DType, int64(rep.Rank)*(t.In+t.Out))
	}
	tw.Flush()
	if len(rep.Skipped) > 0 {
		fmt.Fprintln(w, "\nskipped:")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, s := range rep.Skipped {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", shown(s.Node), shown(s.Op), shown(s.Reason))
		}
		tw.Flush()
	}
	all := rep.BaseParams + rep.LoraParams
	pct := 0.0
	if all > 0 {
		pct = 100 * float64(rep.LoraParams) / float64(all)
	}
	fmt.Fprintf(w, "\nbase params: %d, LoRA params at rank %d: %d (%.4f%% of base)\n", rep.BaseParams, rep.Rank, rep.LoraParams, rep.TrainablePercent)
	fmt.Fprintf(w, "trainable params: %d || all params: %d || trainable%%: %.4f\n", rep.LoraParams, all, pct)
}
