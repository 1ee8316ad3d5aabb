package infer_test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/golden"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/trainstep"
)

// testModels are the testdata models, by name.
func testModels(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("../testdata/models/*.onnx")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no testdata models: %v", err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".onnx"))
	}
	sort.Strings(names)
	return names
}

func loadModel(t *testing.T, name string) *graph.Model {
	t.Helper()
	m, err := graph.Load(filepath.Join("..", "testdata", "models", name+".onnx"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// compileTrain turns a testdata model into its training graph as
// export-train does (rank 2 on every target; lm/ce/mse loss by model).
func compileTrain(name string, m *graph.Model) error {
	opts := trainstep.DefaultOptions()
	opts.Loss, opts.Logits, opts.Labels = "mse", "y", "labels"
	switch name {
	case "gpt2_tiny":
		opts.Loss, opts.Logits = "lm", "logits"
	case "bert_tiny":
		opts.Loss, opts.Logits = "ce", "logits"
	}
	c := &rewrite.Context{Lora: lora.Options{Config: adapter.NewConfig(2, 4)}, Train: opts}
	return rewrite.Run(m, c, "inject", "params", "loss", "autodiff", "optimizer", "prune")
}

// allValues lists every value of g and its subgraphs once, in a fixed
// order: inputs, initializers, then node outputs in Walk order.
func allValues(g *graph.Graph) []*graph.Value {
	seen := map[*graph.Value]bool{}
	var out []*graph.Value
	add := func(vs ...*graph.Value) {
		for _, v := range vs {
			if v != nil && !seen[v] {
				seen[v] = true
				out = append(out, v)
			}
		}
	}
	var visit func(g *graph.Graph)
	visit = func(g *graph.Graph) {
		add(g.Inputs...)
		add(g.Initializers...)
		for _, n := range g.Nodes {
			add(n.Inputs()...) // values of enclosing graphs, read here
			add(n.Outputs()...)
			for _, sg := range n.Subgraphs() {
				visit(sg)
			}
		}
	}
	visit(g)
	return out
}

func formatDims(ds []graph.Dim) string {
	if ds == nil {
		return "?"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		switch {
		case d.Param != "":
			parts[i] = d.Param
		default:
			parts[i] = fmt.Sprint(d.Value)
		}
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// saveDump writes a full dump to $INFER_DUMP_DIR when set, to diff two
// trees' dumps when a digest changes.
func saveDump(t *testing.T, name, dump string) {
	if dir := os.Getenv("INFER_DUMP_DIR"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(dump), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// dumpInfo prints what a fresh Inferer derives for every value of m, one
// line per value: name, dtype, rank, dims and Length1D.
func dumpInfo(m *graph.Model) string {
	inf := infer.New()
	var b strings.Builder
	for _, v := range allValues(m.Graph) {
		in := inf.Info(v)
		fmt.Fprintf(&b, "%s %s %d %s %d\n", v.Name, in.DType, in.Rank, formatDims(in.Dims), inf.Length1D(v))
	}
	return b.String()
}

// TestGoldenInfo pins what the inferer derives for every value of every
// testdata model and of its compiled training graph: a digest per graph
// (infer_digests.txt) and, for all but the largest graphs, the readable
// dump (infer_<model>.txt, infer_<model>.train.txt). A change to an inference rule shows up here; when
// it is deliberate, UPDATE_SNAPSHOTS=1 refreshes the files.
func TestGoldenInfo(t *testing.T) {
	var digests strings.Builder
	for _, name := range testModels(t) {
		m := loadModel(t, name)
		base := dumpInfo(m)
		saveDump(t, name, base)
		fmt.Fprintf(&digests, "%s %x %d\n", name, sha256.Sum256([]byte(base)), strings.Count(base, "\n"))
		if len(base) < 48<<10 {
			golden.Check(t, "infer_"+name+".txt", base)
		}
		if err := compileTrain(name, m); err != nil {
			fmt.Fprintf(&digests, "%s.train error: %v\n", name, err)
			continue
		}
		train := dumpInfo(m)
		saveDump(t, name+".train", train)
		if len(train) < 48<<10 {
			golden.Check(t, "infer_"+name+".train.txt", train)
		}
		fmt.Fprintf(&digests, "%s.train %x %d\n", name, sha256.Sum256([]byte(train)), strings.Count(train, "\n"))
	}
	golden.Check(t, "infer_digests.txt", digests.String())
}
