package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
)

// convertToFloat32 turns every fp16 tensor and type of a model into fp32.
func convertToFloat32(t *testing.T, m *graph.Model) {
	t.Helper()
	for _, v := range m.Graph.Initializers {
		if v.Const.DType == graph.Float16 {
			vals, err := v.Const.Floats()
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := graph.EncodeFloats(graph.Float, vals)
			v.Const.DType = graph.Float
			v.Const.SetBytes(raw)
		}
	}
	for _, v := range append(append([]*graph.Value(nil), m.Graph.Inputs...), m.Graph.Outputs...) {
		if v.Type != nil && v.Type.DType == graph.Float16 {
			v.Type.DType = graph.Float
		}
	}
}

// TestFP16Training trains the fp16 MLP (branch in fp16, and in fp32) and
// its fp32 twin on the same data: fp32 master copies keep the loss curves
// within 3% of the fp32 run over 30 steps.
func TestFP16Training(t *testing.T) {
	env(t)
	dir := t.TempDir()
	m16, err := testmodels.FP16MLP()
	if err != nil {
		t.Fatal(err)
	}
	p16 := filepath.Join(dir, "m16.onnx")
	if err := graph.Save(m16, p16, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	m32, _ := testmodels.FP16MLP()
	convertToFloat32(t, m32)
	p32 := filepath.Join(dir, "m32.onnx")
	if err := graph.Save(m32, p32, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	var lines []string
	for range 64 {
		x := make([]float64, 8)
		y := make([]float64, 8)
		for i := range x {
			x[i] = rng.NormFloat64()
			y[(i+1)%8] = 0.5 * x[i]
		}
		b, _ := json.Marshal(map[string][]float64{"x": x, "labels": y})
		lines = append(lines, string(b))
	}
	data := filepath.Join(dir, "d.jsonl")
	os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	curve := func(model, name string, extra ...string) []float64 {
		lora := filepath.Join(dir, name+".lora.onnx")
		mustLoracc(t, append([]string{"inject", model, "--rank", "2", "--init", "gaussian", "--seed", "1", "-o", lora}, extra...)...)
		run := filepath.Join(dir, name+".run")
		mustLoracc(t, "train", lora, "--data", data, "--loss", "mse", "--logits", "y", "--max-steps", "30", "--lr", "1e-2",
			"--batch-size", "16", "--device", "cpu", "--out", run)
		return lossValues(t, run)
	}
	ref := curve(p32, "fp32")
	for _, mode := range []string{"base", "float32"} {
		got := curve(p16, "fp16-"+mode, "--branch-dtype", mode)
		worst := 0.0
		for i := range ref {
			worst = math.Max(worst, math.Abs(got[i]-ref[i])/math.Abs(ref[i]))
		}
		t.Logf("fp16 base, branch %s: loss %.4f → %.4f (fp32: %.4f → %.4f), worst relative difference %.3g", mode, got[0], got[len(got)-1], ref[0], ref[len(ref)-1], worst)
		if worst > 3e-2 {
			t.Errorf("branch %s: fp16 loss curve departs from fp32 by %.3g", mode, worst)
		}
		if got[len(got)-1] >= got[0] {
			t.Errorf("branch %s: loss did not go down: %v", mode, fmt.Sprint(got[0], got[len(got)-1]))
		}
	}
}

// TestFP16LossInFloat32: the lm loss of a float16 model (the genai
// builder's fp16 form keeps fp16 logits) casts the logits to float32
// before its LogSoftmax, in train.onnx and eval.onnx, as Hugging Face's
// causal-LM loss upcasts them; the gradient reaching the model is cast
// back, so no float16 tensor of the vocabulary's width is reduced (and
// ORT's CPU provider, which has no float16 ScatterElements with add, runs
// the step: TestGenaiFolderTrainsLikeTwin trains it).
func TestFP16LossInFloat32(t *testing.T) {
	dir := t.TempDir()
	o := testmodels.TinyGenai()
	o.FP16 = true
	m, err := testmodels.GenaiLlamaStandard(o)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "lm16.onnx")
	if err := graph.Save(m, base, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	_, _, graphs := exportLM(t, base, `q_proj$`)
	for name, cm := range graphs {
		found := 0
		cm.Graph.Walk(func(n *graph.Node) {
			if n.Op != "LogSoftmax" {
				return
			}
			found++
			p, _ := n.Input(0).Producer()
			if p == nil || p.Op != "Cast" || p.AttrInt("to", 0) != int64(graph.Float) || p.Input(0).Name != "logits" {
				t.Errorf("%s: LogSoftmax %q reads %q, not the float32 cast of the float16 logits", name, n.Name, n.Input(0).Name)
			}
		})
		if found != 1 {
			t.Errorf("%s: %d LogSoftmax nodes, want 1", name, found)
		}
	}
}
