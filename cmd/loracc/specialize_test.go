package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/runtime"
)

// TestStaticTrainGraph: export-train --static compiles the tiny GPT-2's
// step and eval graphs for fixed dims with no shape work left (no Shape,
// NonZero, ConstantOfShape, Range or Size node), and five steps of it give
// the same loss, gradient norm, params and optimizer state, bit for bit,
// as the dynamic graph on the same batch.
func TestStaticTrainGraph(t *testing.T) {
	e := env(t)
	lora, dynDir, io, params := gptTrainSetup(t)
	statDir := filepath.Join(filepath.Dir(dynDir), "static")
	mustLoracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,seq=16", "-o", statDir)
	for _, name := range []string{"train.onnx", "eval.onnx"} {
		m, err := graph.Load(filepath.Join(statDir, name))
		if err != nil {
			t.Fatal(err)
		}
		ops := map[string]int{}
		m.Graph.Walk(func(n *graph.Node) { ops[n.Op]++ })
		for _, op := range []string{"Shape", "NonZero", "ConstantOfShape", "Range", "Size"} {
			if ops[op] != 0 {
				t.Errorf("%s: %d %s nodes left", name, ops[op], op)
			}
		}
		for _, in := range m.Graph.Inputs {
			for _, d := range in.Type.Shape {
				if !d.Known() {
					t.Errorf("%s: input %q keeps a symbolic dim %q", name, in.Name, d.Param)
				}
			}
		}
	}
	statIO := readTrainIO(t, statDir)
	ids := randomTokens(2, 16, 7)
	batch := map[string]runtime.Tensor{"input_ids": ids, "labels": ids}
	dyn := newTrainer(t, e, dynDir, io.Train, batch, params)
	stat := newTrainer(t, e, statDir, statIO.Train, batch, params)
	for step := 1; step <= 5; step++ {
		a, b := dyn.step(t, step, 1e-2), stat.step(t, step, 1e-2)
		for _, o := range io.Train.Outputs {
			if !bytes.Equal(a[o.Name].Data, b[o.Name].Data) {
				t.Fatalf("step %d: output %q differs between the dynamic and the static graph", step, o.Name)
			}
		}
	}
	// A dim no input has is refused, naming the dims there are.
	if _, err := loracc(t, "export-train", lora, "--loss", "lm", "--logits", "logits", "--static", "batch=2,sequence=16", "-o", filepath.Join(statDir, "x")); err == nil {
		t.Error("an unknown dim was accepted")
	} else if want := "no input has the dims sequence (symbolic dims of the inputs: batch, seq)"; !bytes.Contains([]byte(err.Error()), []byte(want)) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

// readTrainIO reads DIR/train.json.
func readTrainIO(t testing.TB, dir string) TrainIO {
	t.Helper()
	var io TrainIO
	data, err := os.ReadFile(filepath.Join(dir, "train.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &io); err != nil {
		t.Fatal(err)
	}
	return io
}
