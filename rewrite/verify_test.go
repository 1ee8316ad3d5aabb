package rewrite_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/trainstep"
)

// verifyCase is a model and how its training graph is compiled.
type verifyCase struct {
	path         string
	loss, logits string
	exclude      []string
	trainFails   string // the export-train error expected, "" for none
	unrollFails  string // the error expected with several steps per run
	require      string // "real": a fetched model (skipped when absent unless LORACC_REQUIRE_REAL=1)
}

// verifyCases lists every testdata model and both real models of
// scripts/fetch-real-models.sh.
func verifyCases(t *testing.T) []verifyCase {
	t.Helper()
	files, err := filepath.Glob("../testdata/models/*.onnx")
	if err != nil || len(files) < 10 {
		t.Fatalf("testdata models: %v (%d found)", err, len(files))
	}
	var cases []verifyCase
	for _, f := range files {
		c := verifyCase{path: f, loss: "mse", logits: "y"}
		switch filepath.Base(f) {
		case "gpt2_tiny.onnx":
			c.loss, c.logits = "lm", "logits"
		case "bert_tiny.onnx":
			c.loss, c.logits = "ce", "logits"
		case "if_gemm.onnx":
			c.trainFails = "no gradient rule" // If has no rule: refused, not miscompiled
		}
		cases = append(cases, c)
	}
	dir := os.Getenv("LORACC_MODELS_DIR")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "loracc", "models")
	}
	cases = append(cases,
		verifyCase{path: filepath.Join(dir, "hello_deepa.onnx"), loss: "mse", logits: "39", require: "real"},
		verifyCase{path: filepath.Join(dir, "ocr_rec.onnx"), loss: "mse", logits: "softmax_11.tmp_0", exclude: []string{"linear_85"}, require: "real",
			unrollFails: "opset ≥ 10"}, // a Paddle export at opset 9
	)
	return cases
}

// TestVerifyAfterEveryPass runs every pipeline the CLI runs — inject,
// strip → fuse, strip → inject, and the training pipelines with one and
// with several steps per run — on every model with Graph.Verify after each
// pass, so a pass that breaks the IR's invariants fails here on the model
// that shows it.
func TestVerifyAfterEveryPass(t *testing.T) {
	for _, vc := range verifyCases(t) {
		t.Run(filepath.Base(vc.path), func(t *testing.T) {
			if _, err := os.Stat(vc.path); err != nil {
				if vc.require != "" && os.Getenv("LORACC_REQUIRE_REAL") != "1" {
					t.Skipf("real model missing (scripts/fetch-real-models.sh): %v", err)
				}
				t.Fatal(err)
			}
			var sel lora.Selector
			for _, e := range vc.exclude {
				sel.Exclude = append(sel.Exclude, regexp.MustCompile(e))
			}
			load := func() *graph.Model {
				m, err := graph.Load(vc.path)
				if err != nil {
					t.Fatal(err)
				}
				return m
			}
			m := load()
			inj := &rewrite.Context{Lora: lora.Options{Selector: sel, Config: adapter.NewConfig(2, 4), Init: lora.Init{Method: "gaussian", Seed: 1}}, Verify: true}
			if err := rewrite.Run(m, inj, "inject"); err != nil {
				t.Fatal(err)
			}
			injected := filepath.Join(t.TempDir(), "m.lora.onnx")
			if err := graph.Save(m, injected, graph.SaveOptions{}); err != nil {
				t.Fatal(err)
			}
			a := inj.Lora.Adapter
			if err := rewrite.Run(load(), &rewrite.Context{Lora: lora.Options{Adapter: a}, Verify: true}, "strip", "fuse"); err != nil {
				t.Fatal(err)
			}
			for _, pipe := range [][]string{{"strip", "fuse"}, {"strip", "inject"}} {
				mi, err := graph.Load(injected)
				if err != nil {
					t.Fatal(err)
				}
				if err := rewrite.Run(mi, &rewrite.Context{Lora: lora.Options{Adapter: a}, Verify: true}, pipe...); err != nil {
					t.Fatalf("%v: %v", pipe, err)
				}
			}
			for _, k := range []int{1, 3} {
				opts := trainstep.DefaultOptions()
				opts.Loss, opts.Logits, opts.Labels, opts.StepsPerRun = vc.loss, vc.logits, "labels", k
				for _, pipe := range [][]string{
					{"params", "loss", "prune"},
					{"params", "loss", "autodiff", "optimizer", "prune", "unroll"},
				} {
					mi, err := graph.Load(injected)
					if err != nil {
						t.Fatal(err)
					}
					err = rewrite.Run(mi, &rewrite.Context{Train: opts, Verify: true}, pipe...)
					name := fmt.Sprintf("K=%d %v", k, pipe)
					want := ""
					if len(pipe) > 3 {
						want = vc.trainFails
						if want == "" && k > 1 {
							want = vc.unrollFails
						}
					}
					switch {
					case want != "":
						if err == nil || !strings.Contains(err.Error(), want) {
							t.Errorf("%s: err = %v, want %q", name, err, want)
						}
					case err != nil:
						t.Errorf("%s: %v", name, err)
					}
				}
			}
		})
	}
}
