package main

import (
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// BenchmarkCompileTargets times inject and export-train on chains of 250,
// 1,000 and 4,000 targets (testmodels.ExternalMLP, hidden 4, so the graph
// work dominates, not the bytes). Compile time must grow near-linearly:
// docs/benchmarks.md records t(4000)/t(1000) ≤ 5.
//
//	go test ./cmd/loracc -run '^$' -bench CompileTargets -benchtime 3x
func BenchmarkCompileTargets(b *testing.B) {
	for _, n := range []int{250, 1000, 4000} {
		dir := b.TempDir()
		m, err := testmodels.ExternalMLP(n, 4)
		if err != nil {
			b.Fatal(err)
		}
		base := filepath.Join(dir, "m.onnx")
		if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
			b.Fatal(err)
		}
		lora := filepath.Join(dir, "m.lora.onnx")
		inject := []string{"loracc", "inject", base, "--rank", "1", "--allow-large-rank", "-o", lora}
		b.Run(fmt.Sprintf("inject/targets=%d", n), func(b *testing.B) {
			for range b.N {
				benchRun(b, inject)
			}
		})
		benchRun(b, inject)
		b.Run(fmt.Sprintf("export-train/targets=%d", n), func(b *testing.B) {
			for i := range b.N {
				benchRun(b, []string{"loracc", "export-train", lora, "--loss", "mse", "-o", filepath.Join(dir, fmt.Sprint("train", i))})
			}
		})
	}
}

func benchRun(b *testing.B, args []string) {
	b.Helper()
	if err := run(args, io.Discard, io.Discard); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSharedNames times inspect and inject on 20,000 targets whose
// nodes all carry one name and one torch.onnx module scope (m.block), as
// exporters that reuse a scope write them: the targets' names are then
// made unique with suffixes, which must stay near-linear too
// (docs/benchmarks.md).
//
//	go test ./cmd/loracc -run '^$' -bench SharedNames -benchtime 1x
func BenchmarkSharedNames(b *testing.B) {
	for _, n := range []int{5000, 20000} {
		dir := b.TempDir()
		m, err := testmodels.ExternalMLP(n, 4)
		if err != nil {
			b.Fatal(err)
		}
		for _, node := range m.Graph.Nodes {
			node.Name = "linear"
			node.Metadata = append(node.Metadata, graph.KV{Key: "pkg.torch.onnx.name_scopes", Value: "['', 'm', 'm.block', 'linear']"})
		}
		base := filepath.Join(dir, "m.onnx")
		if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("inspect/targets=%d", n), func(b *testing.B) {
			for range b.N {
				benchRun(b, []string{"loracc", "inspect", base, "--rank", "1"})
			}
		})
		b.Run(fmt.Sprintf("inject/targets=%d", n), func(b *testing.B) {
			for range b.N {
				benchRun(b, []string{"loracc", "inject", base, "--rank", "1", "--allow-large-rank", "-o", filepath.Join(dir, "m.lora.onnx")})
			}
		})
	}
}
