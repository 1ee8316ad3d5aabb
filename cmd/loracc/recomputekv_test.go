package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// TestRecomputeExpansions: on a grouped-query Llama (2 key/value heads
// for 4) --recompute attention also recomputes repeat_kv's expanded keys
// and values in the backward (two Expand copies a layer) instead of
// keeping them, and static training on the CPU gives the loss column,
// gradient norms and adapter of the plain step bit for bit (the copies
// move the same elements).
func TestRecomputeExpansions(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 2)
	if cfg.KVHeads >= cfg.Heads {
		t.Fatalf("the test model has %d key/value heads for %d: not grouped", cfg.KVHeads, cfg.Heads)
	}
	recomputedKV(t, dir, lora, 2*cfg.Layers, int64(cfg.Vocab))
}

// TestRecomputeExpansionsTorchExport: the same on Optimum's torch.onnx
// export of a grouped-query Llama (testdata/models/optimum_llama: 2
// layers, 2 key/value heads for 4), whose repeat_kv computes its Expand's
// target shape while the model runs — the expansions were kept there
// until the rewrite took an Expand from a dim of 1 to an unknown one as
// growing (the 1B benchmark model is such an export).
func TestRecomputeExpansionsTorchExport(t *testing.T) {
	dir := t.TempDir()
	lora := filepath.Join(dir, "m.lora.onnx")
	mustLoracc(t, "inject", "../../testdata/models/optimum_llama/model.onnx", "--rank", "4", "--init", "gaussian", "--seed", "2", "-o", lora)
	recomputedKV(t, dir, lora, 4, 96)
}

// recomputedKV compiles lora's static step with --recompute attention,
// counts the recomputed Expand nodes against want, and trains both ways
// on the CPU, asserting the same loss column and adapter bit for bit.
func recomputedKV(t *testing.T, dir, lora string, want int, vocab int64) {
	t.Helper()
	out := filepath.Join(dir, "g")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch_size=2,sequence_length=16", "--recompute", "attention", "-o", out)
	copies := countNodes(t, filepath.Join(out, "train.onnx"), func(n *graph.Node, _ *infer.Inferer) bool {
		return n.Op == "Expand" && strings.HasSuffix(n.Name, ".recomputed")
	})
	if copies != want {
		t.Errorf("%d recomputed Expand nodes, want %d (K and V of every layer)", copies, want)
	}
	data := precisionData(t, dir, 16, 16, vocab)
	var cols, adapters [2][]byte
	for i, r := range []string{"none", "attention"} {
		run := filepath.Join(dir, "run_"+r)
		mustLoracc(t, "train", lora, "--data", data, "--loss", "lm", "--logits", "logits", "--max-steps", "6", "--batch-size", "4",
			"--lr", "1e-2", "--device", "cpu", "--static", "--save-every", "0", "--recompute", r, "--out", run)
		cols[i], adapters[i] = trainedRun(t, run)
	}
	if string(cols[0]) != string(cols[1]) {
		t.Errorf("recomputing changed the loss or gradient norm column:\n%s\nrecomputed:\n%s", cols[0], cols[1])
	}
	if string(adapters[0]) != string(adapters[1]) {
		t.Errorf("recomputing changed the trained adapter")
	}
}
