package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/graph/onnxpb"
)

// Test models are built straight from the generated protobuf types so these
// tests do not depend on package graph's loader.

// vi declares a tensor value. Each dim is an int (dim_value), a string
// (dim_param) or nil (unknown dim). noShape() instead of dims leaves the
// shape out entirely.
func vi(name string, dt graph.DataType, dims ...any) *onnxpb.ValueInfoProto {
	tt := &onnxpb.TypeProto_Tensor{ElemType: proto.Int32(int32(dt))}
	if !(len(dims) == 1 && dims[0] == noShape{}) {
		shape := &onnxpb.TensorShapeProto{}
		for _, d := range dims {
			dim := &onnxpb.TensorShapeProto_Dimension{}
			switch d := d.(type) {
			case int:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: int64(d)}
			case string:
				dim.Value = &onnxpb.TensorShapeProto_Dimension_DimParam{DimParam: d}
			}
			shape.Dim = append(shape.Dim, dim)
		}
		tt.Shape = shape
	}
	return &onnxpb.ValueInfoProto{
		Name: proto.String(name),
		Type: &onnxpb.TypeProto{Value: &onnxpb.TypeProto_TensorType{TensorType: tt}},
	}
}

type noShape struct{}

func node(op string, ins, outs []string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	return &onnxpb.NodeProto{
		OpType:    proto.String(op),
		Name:      proto.String(op + "_" + outs[0]),
		Input:     ins,
		Output:    outs,
		Attribute: attrs,
	}
}

func intAttr(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

type graphSpec struct {
	nodes   []*onnxpb.NodeProto
	inputs  []*onnxpb.ValueInfoProto
	outputs []*onnxpb.ValueInfoProto
	inits   []*onnxpb.TensorProto
}

func (g graphSpec) bytes(t *testing.T) []byte {
	t.Helper()
	m := &onnxpb.ModelProto{
		IrVersion:    proto.Int64(10),
		ProducerName: proto.String("loracc-runtime-test"),
		OpsetImport:  []*onnxpb.OperatorSetIdProto{{Domain: proto.String(""), Version: proto.Int64(20)}},
		Graph: &onnxpb.GraphProto{
			Name:        proto.String("test"),
			Node:        g.nodes,
			Input:       g.inputs,
			Output:      g.outputs,
			Initializer: g.inits,
		},
	}
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// write saves the model in a fresh temp dir and returns its path.
func (g graphSpec) write(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(p, g.bytes(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// findLib returns the ORT library's path. Where there is none it skips the
// test, or fails it under LORACC_REQUIRE_ORT, as internal/ortest does
// (which these in-package tests cannot import: it imports runtime), so a
// run that requires ORT cannot pass by skipping.
func findLib(t *testing.T) string {
	t.Helper()
	lib, err := FindLibrary("")
	if err != nil {
		if errors.Is(err, ErrNoLibrary) && os.Getenv("LORACC_REQUIRE_ORT") == "" {
			t.Skipf("no onnxruntime library (run scripts/fetch-ort.sh): %v", err)
		}
		t.Fatal(err)
	}
	return lib
}

// openEnv opens the ORT library (see findLib for when it skips).
func openEnv(t *testing.T) *Env {
	t.Helper()
	lib := findLib(t)
	env, err := Open(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("env.Close: %v", err)
		}
	})
	return env
}

// openSession opens the model at path, closing it when the test ends (before
// the env, as cleanups run last-in first-out).
func openSession(t *testing.T, env *Env, path string, opts SessionOptions) *Session {
	t.Helper()
	s, err := env.NewSession(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("session.Close: %v", err)
		}
	})
	return s
}

func mustFloats(t *testing.T, tensor Tensor) []float32 {
	t.Helper()
	v, err := tensor.Floats()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// addModel is z = x + y with a symbolic batch dim.
func addModel() graphSpec {
	return graphSpec{
		nodes:   []*onnxpb.NodeProto{node("Add", []string{"x", "y"}, []string{"z"})},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "batch", 3), vi("y", graph.Float, "batch", 3)},
		outputs: []*onnxpb.ValueInfoProto{vi("z", graph.Float, "batch", 3)},
	}
}
