package rewrite

import (
	"fmt"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/golden"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/trainstep"
)

func TestGoldenSeedInject(t *testing.T) {
	m := seedModel(t)
	c := &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 4), Init: lora.Init{Method: "kaiming", Seed: 1}}, Verify: true}
	if err := Run(m, c, "inject"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "seed_inject.txt", graph.Format(m))
	adaptersAsInputs := seedModel(t)
	c = &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 2), AdapterInputs: true}, Verify: true}
	if err := Run(adaptersAsInputs, c, "inject"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "seed_inject_inputs.txt", graph.Format(adaptersAsInputs))
}

// TestGoldenSeedTrain prints the seed model's training graph after every
// pass, as `loracc export-train --dump` does.
func TestGoldenSeedTrain(t *testing.T) {
	m := seedModel(t)
	if err := Run(m, &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 2), Init: lora.Init{Method: "kaiming", Seed: 1}}}, "inject"); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	opts := trainstep.DefaultOptions()
	opts.Loss, opts.Logits, opts.Labels, opts.ClipNorm = "mse", "y", "labels", 1
	c := &Context{Train: opts, Verify: true, Dump: func(pass string, m *graph.Model) {
		fmt.Fprintf(&out, "=== after pass %q ===\n%s", pass, graph.Format(m))
	}}
	if err := Run(m, c, "params", "loss", "autodiff", "optimizer", "prune"); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "seed_train.txt", out.String())
	for _, n := range m.Graph.Nodes {
		if n.Domain != "" {
			t.Errorf("node %q uses domain %q: training graphs must be plain ai.onnx", n.Name, n.Domain)
		}
	}
}

// TestGoldenSeedSplit prints the seed model's split step: the gradient
// graph (loss sum, count, gradients of the sum) and the optimizer graph,
// whose forward is pruned away: only the division by the global count,
// clipping and AdamW remain.
func TestGoldenSeedSplit(t *testing.T) {
	var out strings.Builder
	for _, half := range []struct {
		name   string
		sums   bool
		passes []string
	}{
		{"grad", true, []string{"params", "loss", "autodiff", "grads", "prune"}},
		{"optim", false, []string{"params", "reduced-grads", "optimizer", "prune"}},
	} {
		m := seedModel(t)
		if err := Run(m, &Context{Lora: lora.Options{Config: adapter.NewConfig(2, 2), Init: lora.Init{Method: "kaiming", Seed: 1}}}, "inject"); err != nil {
			t.Fatal(err)
		}
		opts := trainstep.DefaultOptions()
		opts.Loss, opts.Logits, opts.Labels, opts.ClipNorm, opts.Sums = "mse", "y", "labels", 1, half.sums
		c := &Context{Train: opts, Verify: true}
		if err := Run(m, c, half.passes...); err != nil {
			t.Fatalf("%s: %v", half.name, err)
		}
		fmt.Fprintf(&out, "=== %s.onnx ===\n", half.name)
		for _, e := range append(c.IO.Inputs, c.IO.Outputs...) {
			fmt.Fprintf(&out, "io %s %s %s\n", e.Role, e.Name, e.DType)
		}
		out.WriteString(graph.Format(m))
		for _, n := range m.Graph.Nodes {
			if half.name == "optim" && n.Op == "MatMul" {
				t.Errorf("optim.onnx keeps the forward's node %q", n.Name)
			}
		}
	}
	golden.Check(t, "seed_split.txt", out.String())
}
