package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph/onnxpb"
	"google.golang.org/protobuf/proto"
)

// TestFuseCheckInvalidRandomInputs: when ONNX Runtime cannot run the model
// on --check's random inputs (here a Reshape whose shape is an input), the
// error names the input model and says what --check fed it, not a scratch
// file that no longer exists, and nothing is written.
func TestFuseCheckInvalidRandomInputs(t *testing.T) {
	env(t)
	dir := t.TempDir()
	base := editedSeed(t, dir, "reshape.onnx", func(m *onnxpb.ModelProto) {
		i64 := int32(onnxpb.TensorProto_INT64)
		m.Graph.Input = append(m.Graph.Input, &onnxpb.ValueInfoProto{Name: proto.String("shape"), Type: &onnxpb.TypeProto{
			Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: &i64,
				Shape: &onnxpb.TensorShapeProto{Dim: []*onnxpb.TensorShapeProto_Dimension{{Value: &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: 3}}}}}}}})
		out := m.Graph.Output[0]
		m.Graph.Node = append(m.Graph.Node, &onnxpb.NodeProto{OpType: proto.String("Reshape"), Name: proto.String("r"),
			Input: []string{out.GetName(), "shape"}, Output: []string{"reshaped"}})
		f32 := int32(onnxpb.TensorProto_FLOAT)
		m.Graph.Output = []*onnxpb.ValueInfoProto{{Name: proto.String("reshaped"), Type: &onnxpb.TypeProto{
			Value: &onnxpb.TypeProto_TensorType{TensorType: &onnxpb.TypeProto_Tensor{ElemType: &f32}}}}}
	})
	ad := filepath.Join(dir, "seed.adapter")
	if err := seedAdapter().Save(ad); err != nil {
		t.Fatal(err)
	}
	before := listDir(t, dir)
	_, err := loracc(t, "fuse", base, "--adapter", ad, "--check", "-o", filepath.Join(dir, "out.onnx"))
	if err == nil {
		t.Fatal("ONNX Runtime ran the Reshape on the random shape; the test needs an input it refuses")
	}
	msg := err.Error()
	if !strings.Contains(msg, "reshape.onnx: --check ran") || !strings.Contains(msg, "random inputs may not be valid") || strings.Contains(msg, ".tmp") {
		t.Errorf("error %q", msg)
	}
	if after := listDir(t, dir); after != before {
		t.Errorf("files changed: %s → %s", before, after)
	}
	// Real inputs make the check pass: from the command line or from the
	// first line of a JSONL file; the other inputs stay random.
	data := filepath.Join(dir, "check.jsonl")
	if err := os.WriteFile(data, []byte("\n"+`{"shape": [-1, 2, 2]}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--check-input", "shape=-1,1,4"}, {"--check-data", data}} {
		out := filepath.Join(dir, "ok.onnx")
		res, err := loracc(t, append([]string{"fuse", base, "--adapter", ad, "-o", out}, args...)...)
		if err != nil || !strings.Contains(res, "check: 1 outputs") || !strings.Contains(res, ": ok") {
			t.Errorf("%v: %v\n%s", args, err, res)
		}
		os.Remove(out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--check-input", "nope=1"}, `reshape.onnx: --check: --check-input nope: the model has no input "nope"`},
		{[]string{"--check-input", "shape=1,2"}, `reshape.onnx: --check: --check-input shape: dim 0 is 2, input "shape" declares 3`},
		{[]string{"--check-input", "shape=1.5,1,4"}, `input "shape": value 1.5 at element 0 is not a int64`},
		{[]string{"--check-input", "shape"}, `--check-input "shape": want NAME=V1,V2,... or NAME=D1xD2`},
		{[]string{"--check-input", "shape=NaN,1,4"}, `--check-input "shape=NaN,1,4": "NaN" is not a finite number`},
		{[]string{"--check-data", filepath.Join(dir, "none.jsonl")}, "--check-data: "},
	} {
		if _, err := loracc(t, append([]string{"fuse", base, "--adapter", ad, "-o", filepath.Join(dir, "bad.onnx")}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
}

// TestNestedCheckData: --check-data arrays must be rectangular; their
// shape and values come out in order.
func TestNestedCheckData(t *testing.T) {
	for src, want := range map[string]string{
		`3`:                "[] [3]",
		`[[1, 2], [3, 4]]`: "[2 2] [1 2 3 4]",
		`[true, false]`:    "[2] [1 0]",
		`[[1, 2], [3]]`:    "error",
		`[[1, 2], 3]`:      "error",
		`[1, [2]]`:         "error",
		`[[1], [[2]]]`:     "error",
		`"x"`:              "error",
	} {
		var v any
		if err := json.Unmarshal([]byte(src), &v); err != nil {
			t.Fatal(err)
		}
		g, err := nested(v)
		got := fmt.Sprint(g.shape, " ", g.vals)
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("%s: %s (%v), want %s", src, got, err, want)
		}
	}
}
