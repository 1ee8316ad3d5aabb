package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph/onnxpb"
	"github.com/loracc/loracc/internal/ortest"
	"github.com/loracc/loracc/lora"
	"google.golang.org/protobuf/proto"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/rewrite"
	"github.com/loracc/loracc/runtime"
)

// loracc runs the CLI in-process and returns stdout.
func loracc(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(append([]string{"loracc"}, args...), &out, &errb)
	return out.String(), err
}

func mustLoracc(t *testing.T, args ...string) string {
	t.Helper()
	out, err := loracc(t, args...)
	if err != nil {
		t.Fatalf("loracc %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// env opens ONNX Runtime or skips; with LORACC_REQUIRE_ORT=1 (CI) a
// missing library fails instead.
func env(t testing.TB) *runtime.Env {
	return ortest.Env(t)
}

// testModels lists the committed test models.
func testModels(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob("../../testdata/models/*.onnx")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no test models: %v", err)
	}
	sort.Strings(paths)
	return paths
}

// copyModel puts a model in a temp folder so outputs land beside it.
func copyModel(t *testing.T, src string) string {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestSeedInspect(t *testing.T) {
	out := mustLoracc(t, "inspect", "../../testdata/models/seed.onnx", "--rank", "2", "--json")
	var rep struct {
		Targets []struct {
			Name    string
			Node    string
			Op      string
			In, Out int64
			DType   string
		}
		Skipped          []any
		BaseParams       int64   `json:"base_params"`
		LoraParams       int64   `json:"lora_params"`
		TrainablePercent float64 `json:"trainable_percent"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if rep.BaseParams != 20 || rep.LoraParams != 18 || rep.TrainablePercent != 90 {
		t.Errorf("base %d lora %d pct %v, want 20, 18, 90", rep.BaseParams, rep.LoraParams, rep.TrainablePercent)
	}
	if len(rep.Targets) != 1 || rep.Targets[0].Name != "seed" || rep.Targets[0].In != 5 || rep.Targets[0].Out != 4 || rep.Targets[0].DType != "float32" {
		t.Errorf("targets = %+v", rep.Targets)
	}
	human := mustLoracc(t, "inspect", "--rank", "2", "../../testdata/models/seed.onnx")
	if !strings.Contains(human, "trainable params: 18 || all params: 38 || trainable%: 47.3684") {
		t.Errorf("no PEFT line in:\n%s", human)
	}
}

func TestInspectAttentionSkips(t *testing.T) {
	out := mustLoracc(t, "inspect", "../../testdata/models/transformer_block.onnx", "--json")
	var rep struct {
		Targets []struct{ Name string }
		Skipped []struct{ Node, Reason string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	acts := 0
	for _, s := range rep.Skipped {
		if strings.Contains(s.Reason, "activation × activation") {
			acts++
		}
	}
	if acts != 2 || len(rep.Targets) != 6 {
		t.Errorf("transformer block: %d targets, %d activation skips, want 6 and 2: %s", len(rep.Targets), acts, out)
	}
}

// TestInjectEveryModel: with B = 0 the injected model computes the base's
// outputs, and injecting twice gives byte-identical files.
func TestInjectEveryModel(t *testing.T) {
	e := env(t)
	for _, src := range testModels(t) {
		t.Run(filepath.Base(src), func(t *testing.T) {
			base := copyModel(t, src)
			dir := filepath.Dir(base)
			var files [2][][]byte
			for i := range 2 {
				out := filepath.Join(dir, "run"+string(rune('a'+i))+".onnx")
				mustLoracc(t, "inject", base, "--rank", "2", "--seed", "7", "-o", out, "--adapter", filepath.Join(dir, "adapter"))
				for _, f := range []string{out, filepath.Join(dir, "adapter", "adapter_model.safetensors"), filepath.Join(dir, "adapter", "adapter_config.json")} {
					b, err := os.ReadFile(f)
					if err != nil {
						t.Fatal(err)
					}
					files[i] = append(files[i], b)
				}
			}
			for k := range files[0] {
				if !bytes.Equal(files[0][k], files[1][k]) {
					t.Errorf("file %d differs between two identical inject runs", k)
				}
			}
			if !ortRuns(t, e, base) {
				return
			}
			res, err := compareModels(e, base, filepath.Join(dir, "runa.onnx"), "cpu", 1)
			if err != nil {
				t.Fatal(err)
			}
			if res.MaxAbs > 1e-6 && !lowPrecision(t, base) {
				t.Errorf("injected (B=0) differs from base: %s", res)
			}
			if !res.OK() {
				t.Errorf("injected (B=0) differs from base: %s", res)
			}
		})
	}
}

func lowPrecision(t *testing.T, path string) bool {
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range m.Graph.Outputs {
		if v.DType() != graph.Float {
			return true
		}
	}
	return false
}

// randomizeAdapter gives every layer non-zero A and B.
func randomizeAdapter(t *testing.T, dir string, seed uint64) {
	t.Helper()
	a, err := adapter.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range a.Layers {
		for k := range a.Layers[i].A {
			a.Layers[i].A[k] = float32(rng.NormFloat64() * 0.2)
		}
		for k := range a.Layers[i].B {
			a.Layers[i].B[k] = float32(rng.NormFloat64() * 0.2)
		}
	}
	if err := a.Save(dir); err != nil {
		t.Fatal(err)
	}
}

func opHistogram(t *testing.T, path string) string {
	m, err := graph.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	m.Graph.Walk(func(n *graph.Node) { ops = append(ops, n.Op) })
	sort.Strings(ops)
	return strings.Join(ops, ",")
}

// TestFuseEveryModel: fusing a non-zero adapter gives the unfused model's
// outputs, with the base's node count and ops; fusing a base model or the
// injected one gives the same file.
func TestFuseEveryModel(t *testing.T) {
	e := env(t)
	for _, src := range testModels(t) {
		t.Run(filepath.Base(src), func(t *testing.T) {
			base := copyModel(t, src)
			dir := filepath.Dir(base)
			injected := filepath.Join(dir, "m.lora.onnx")
			ad := filepath.Join(dir, "m.lora.adapter")
			// Rank 3 is more than some toy weights hold: the flag allows it.
			mustLoracc(t, "inject", base, "--rank", "3", "--alpha", "6", "--allow-large-rank", "-o", injected)
			randomizeAdapter(t, ad, 3)
			fusedA := filepath.Join(dir, "a.fused.onnx")
			fusedB := filepath.Join(dir, "b.fused.onnx")
			runs := ortRuns(t, e, base)
			if strings.Contains(src, "quantized") || strings.Contains(src, "nbits") {
				// re-quantizing rounds W': TestQuantizedFuse covers it
				runs = false
			}
			args := []string{"fuse", injected, "--adapter", ad, "-o", fusedA}
			if runs {
				args = append(args, "--check")
			}
			out := mustLoracc(t, args...)
			if runs && !strings.Contains(out, ": ok") {
				t.Errorf("fuse --check output: %s", out)
			}
			mustLoracc(t, "fuse", base, "--adapter", ad, "-o", fusedB)
			a, _ := os.ReadFile(fusedA)
			b, _ := os.ReadFile(fusedB)
			if !bytes.Equal(a, b) {
				t.Error("fusing the injected model and fusing the base give different files")
			}
			if got, want := opHistogram(t, fusedA), opHistogram(t, base); got != want {
				t.Errorf("fused ops %s, base ops %s", got, want)
			}
			if !runs {
				return
			}
			// The unfused reference: the base with the randomized adapter injected.
			ref := filepath.Join(dir, "ref.onnx")
			buildUnfused(t, base, ad, ref)
			res, err := compareModels(e, ref, fusedA, "cpu", 5)
			if err != nil {
				t.Fatal(err)
			}
			if !res.OK() {
				t.Errorf("fused differs from unfused: %s", res)
			}
			moved, err := compareModels(e, base, fusedA, "cpu", 5)
			if err != nil {
				t.Fatal(err)
			}
			if moved.MaxAbs < 1e-3 {
				t.Errorf("the adapter did not change the outputs: %s", moved)
			}
		})
	}
}

func buildUnfused(t *testing.T, base, adapterDir, out string) {
	t.Helper()
	a, err := adapter.Load(adapterDir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := graph.Load(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := rewrite.Run(m, &rewrite.Context{Lora: lora.Options{Adapter: a}, Verify: true}, "inject"); err != nil {
		t.Fatal(err)
	}
	if err := graph.Save(m, out, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ortRuns reports whether ONNX Runtime's CPU provider can load the model;
// it has no bfloat16 MatMul, so bf16 models are checked in Go only.
func ortRuns(t *testing.T, e *runtime.Env, path string) bool {
	t.Helper()
	s, err := e.NewSession(path, runtime.SessionOptions{})
	if err != nil {
		if strings.Contains(err.Error(), "Could not find an implementation") {
			t.Logf("ORT CPU cannot run %s (%v): numeric comparison skipped", filepath.Base(path), err)
			return false
		}
		t.Fatal(err)
	}
	s.Close()
	return true
}

// TestRoundTripORT: a model loaded and saved by loracc computes exactly
// what the original does.
func TestRoundTripORT(t *testing.T) {
	e := env(t)
	for _, src := range testModels(t) {
		m, err := graph.Load(src)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(t.TempDir(), filepath.Base(src))
		if err := graph.Save(m, out, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		if !ortRuns(t, e, src) {
			continue
		}
		res, err := compareModels(e, src, out, "cpu", 11)
		if err != nil {
			t.Fatal(err)
		}
		if res.MaxAbs != 0 {
			t.Errorf("%s: outputs changed by load → save: %s", src, res)
		}
	}
}

// TestSeedDemo runs the README's main job and checks the fused table.
func TestSeedDemo(t *testing.T) {
	env(t)
	out := mustLoracc(t, "demo", "--dir", t.TempDir())
	for _, want := range []string{
		"trainable params: 18 || all params: 38 || trainable%: 47.3684",
		"  19.4900  20.6800  21.8700  23.0600",
		"check: 1 outputs",
		"the trained adapter matches the seed's ΔW",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestGPTDemo runs the second example: the fused model must beat the base
// on held-out sequences (the command fails otherwise).
func TestGPTDemo(t *testing.T) {
	env(t)
	out := mustLoracc(t, "demo-gpt", "--model", "../../testdata/models/gpt2_tiny.onnx", "--dir", t.TempDir(), "--steps", "300")
	if !strings.Contains(out, "fused (trained) model") {
		t.Errorf("no comparison in:\n%s", out)
	}
}

// TestInspectEscapesNames: node names holding terminal escape sequences
// or newlines are printed quoted, never raw.
func TestInspectEscapesNames(t *testing.T) {
	dir := t.TempDir()
	evil := editedSeed(t, dir, "evil.onnx", func(m *onnxpb.ModelProto) {
		for _, n := range m.Graph.Node {
			n.Name = proto.String("\x1b]0;pwned\x07\x1b[31mred\nline")
		}
	})
	out := mustLoracc(t, "inspect", evil)
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Fatalf("raw escape in output: %q", out)
	}
	if !strings.Contains(out, `"\x1b]0;pwned\a\x1b[31mred\nline"`) {
		t.Errorf("quoted name missing from:\n%s", out)
	}
}
