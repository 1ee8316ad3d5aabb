package main

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// TestCastRowSums: under autocast (fp16 on the CPU here; bf16 on CUDA
// alike) the backward has no select over [B, H, T, T] (the masking Where
// passes the softmax's gradient), and the softmax gradient's row sums
// come from the attention output, Σ go·o over its [.., D] rows, also
// through autocast's Cast of the probabilities, so no [B, H, T, T]
// product is reduced for them — one per layer before, with
// --disable-rewrite cast-row-sums. Four fp16 steps on the CPU give the
// loss and gradient norm of the Σ gy·y form to fp16 precision (the first
// loss bit for bit: the forward is the same).
func TestCastRowSums(t *testing.T) {
	dir := t.TempDir()
	lora, cfg := attnLlama(t, dir, 3)
	const batch, seq = 4, 32
	// square counts the backward's op nodes that read a [.., seq, seq]
	// value.
	square := func(train, op string) int {
		return countNodes(t, train, func(n *graph.Node, inf *infer.Inferer) bool {
			return n.Op == op && strings.HasPrefix(n.Name, "grad/") && slices.ContainsFunc(n.Inputs(), func(v *graph.Value) bool { return squareDims(inf, v, seq) })
		})
	}
	data := precisionData(t, dir, 8, seq, int64(cfg.Vocab))
	var curves [2][][2]float64
	for i, disable := range []string{"", "cast-row-sums"} {
		args := []string{"--loss", "lm", "--logits", "logits", "--compute-dtype", "fp16"}
		if disable != "" {
			args = append(args, "--disable-rewrite", disable)
		}
		out := filepath.Join(dir, "static"+disable)
		mustLoracc(t, append([]string{"export-train", lora, "--static", "batch_size=4,sequence_length=32", "-o", out}, args...)...)
		want := 0
		if disable != "" {
			want = cfg.Layers
		}
		if got := square(filepath.Join(out, "train.onnx"), "ReduceSum"); got != want {
			t.Errorf("--disable-rewrite %q: %d row sums over [.., T, T], want %d", disable, got, want)
		}
		// The masking Where's gradient is the softmax's (maskedScores).
		if got := square(filepath.Join(out, "train.onnx"), "Where"); got != 0 {
			t.Errorf("--disable-rewrite %q: %d Where nodes over [.., T, T] in the backward, want 0", disable, got)
		}
		run := filepath.Join(dir, "run"+disable)
		mustLoracc(t, append([]string{"train", lora, "--data", data, "--max-steps", "4", "--batch-size", strconv.Itoa(batch),
			"--lr", "1e-2", "--device", "cpu", "--save-every", "0", "--out", run}, args...)...)
		b, err := os.ReadFile(filepath.Join(run, "metrics.csv"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(lossAndNorm(t, b)), "\n")[1:] {
			f := strings.Split(line, ",")
			if len(f) != 3 {
				continue
			}
			loss, err1 := strconv.ParseFloat(f[1], 64)
			norm, err2 := strconv.ParseFloat(f[2], 64)
			if err1 != nil || err2 != nil {
				t.Fatalf("metrics.csv line %q: %v %v", line, err1, err2)
			}
			curves[i] = append(curves[i], [2]float64{loss, norm})
		}
	}
	if len(curves[0]) != 4 || len(curves[1]) != 4 {
		t.Fatalf("steps logged: %d and %d, want 4", len(curves[0]), len(curves[1]))
	}
	if curves[0][0][0] != curves[1][0][0] {
		t.Errorf("step 1 loss %v vs %v: the forward differs", curves[0][0][0], curves[1][0][0])
	}
	for s := range curves[0] {
		a, b := curves[0][s], curves[1][s]
		if math.Abs(a[0]-b[0]) > 1e-3*math.Abs(b[0]) || math.Abs(a[1]-b[1]) > 2e-2*math.Abs(b[1]) {
			t.Errorf("step %d: loss %v, grad norm %v with the cast row sums; %v, %v without", s+1, a[0], a[1], b[0], b[1])
		}
	}
}

// countNodes is how many nodes of the model at path keep holds for, with
// an inferer over it.
func countNodes(t *testing.T, path string, keep func(*graph.Node, *infer.Inferer) bool) int {
	t.Helper()
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	inf := infer.New()
	n := 0
	for _, node := range m.Graph.Nodes {
		if keep(node, inf) {
			n++
		}
	}
	return n
}

// squareDims reports whether v is [.., n, n] of rank 4 (an attention's
// [B, H, T, T] with T = n).
func squareDims(inf *infer.Inferer, v *graph.Value, n int64) bool {
	d := inf.Info(v).Dims
	return v != nil && len(d) == 4 && d[2].Value == n && d[3].Value == n
}
