// Command llama writes the standard-ops Llama of package testmodels
// (testmodels.Llama, an Optimum-style export) at any size, every weight in
// FILE.data. It exists for the benchmarks that need a model too large to
// carry to the GPU machine or to export there with torch.onnx in time
// (the 7B run of docs/gpu-benchmarks.md): one static binary builds it
// where it runs. Weights are random (±1/√rows unless -tiny-init); the
// whole model is held in memory while it is written.
//
// Usage: llama [-vocab V -hidden H -layers L -heads N -kv-heads K -intermediate I] [-cache] [-int4] [-opset N] FILE.onnx
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

func main() {
	var c testmodels.LlamaConfig
	flag.IntVar(&c.Vocab, "vocab", 32000, "vocabulary size")
	flag.IntVar(&c.Hidden, "hidden", 4096, "model width")
	flag.IntVar(&c.Layers, "layers", 32, "decoder layers")
	flag.IntVar(&c.Heads, "heads", 32, "query heads")
	flag.IntVar(&c.KVHeads, "kv-heads", 32, "key/value heads")
	flag.IntVar(&c.Intermediate, "intermediate", 11008, "MLP width")
	flag.BoolVar(&c.Cache, "cache", false, "past_key_values inputs and present outputs")
	flag.BoolVar(&c.Int4, "int4", false, "projections as 4-bit com.microsoft MatMulNBits (block 32; QLoRA-style base)")
	flag.Int64Var(&c.Opset, "opset", 18, "the default domain's opset (at least 18; 21 lets an int4 base's backward use DequantizeLinear)")
	tiny := flag.Bool("tiny-init", false, "weights uniform in ±0.5 (the test models' init)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: llama [flags] FILE.onnx (defaults: Llama-2-7B's shape)")
		os.Exit(2)
	}
	c.ScaledInit = !*tiny
	if err := write(flag.Arg(0), c); err != nil {
		fmt.Fprintln(os.Stderr, "llama:", err)
		os.Exit(1)
	}
}

func write(path string, c testmodels.LlamaConfig) error {
	t0 := time.Now()
	m, err := testmodels.Llama(c)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "built in %.1f s\n", time.Since(t0).Seconds())
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := graph.Save(m, path, graph.SaveOptions{Externalize: true}); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s (+ %s.data) in %.1f s\n", path, filepath.Base(path), time.Since(t0).Seconds())
	return nil
}
