package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/graph/onnxpb"
	"github.com/loracc/loracc/runtime/internal/ort"
)

type ortTensor = ort.Tensor

// These tests need no ONNX Runtime library.

func TestFindLibrary(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libonnxruntime.so.1")
	if err := os.WriteFile(lib, []byte("stub"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "nope.so")

	t.Setenv("LORACC_ORT_LIB", "")
	t.Setenv("LORACC_ORT_DIR", dir)
	t.Setenv("HOME", t.TempDir())
	if got, err := FindLibrary(""); err != nil || got != lib {
		t.Errorf("from LORACC_ORT_DIR: %q, %v", got, err)
	}
	if got, err := FindLibrary(lib); err != nil || got != lib {
		t.Errorf("flag: %q, %v", got, err)
	}
	if _, err := FindLibrary(missing); !errors.Is(err, ErrNoLibrary) {
		t.Errorf("missing flag path: %v", err)
	}
	t.Setenv("LORACC_ORT_LIB", missing)
	if _, err := FindLibrary(""); !errors.Is(err, ErrNoLibrary) {
		t.Errorf("missing LORACC_ORT_LIB: %v", err)
	}
	t.Setenv("LORACC_ORT_LIB", lib)
	t.Setenv("LORACC_ORT_DIR", "")
	if got, err := FindLibrary(""); err != nil || got != lib {
		t.Errorf("from LORACC_ORT_LIB: %q, %v", got, err)
	}
	t.Setenv("LORACC_ORT_LIB", "")
	if _, err := FindLibrary(""); !errors.Is(err, ErrNoLibrary) {
		t.Errorf("nothing installed under a fresh HOME: %v", err)
	}
}

func TestReadModelIO(t *testing.T) {
	g := graphSpec{
		nodes: []*onnxpb.NodeProto{node("Add", []string{"x", "w"}, []string{"y"})},
		inputs: []*onnxpb.ValueInfoProto{
			vi("x", graph.BFloat16, "batch", nil, 4), vi("w", graph.BFloat16, 4), vi("k", graph.Int64),
		},
		outputs: []*onnxpb.ValueInfoProto{vi("y", graph.BFloat16, noShape{})},
		inits:   []*onnxpb.TensorProto{{Name: proto.String("w"), RawData: make([]byte, 1<<16)}},
	}
	b := g.bytes(t)
	p := filepath.Join(t.TempDir(), "m.onnx")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mio, err := readModelIO(f, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%+v | %+v", mio.inputs, mio.outputs)
	want := "[{Name:x DType:bfloat16 Shape:[-1 -1 4] DimParams:[batch  ]} {Name:k DType:int64 Shape:[] DimParams:[]}] | [{Name:y DType:bfloat16 Shape:[] DimParams:[]}]"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if mio.outputs[0].Shape != nil {
		t.Error("missing shape must read as nil")
	}

	// Cutting the file anywhere inside the graph (everything but the
	// opset_import, which is marshalled after it) is an error, not a panic.
	for n := range len(b) - 20 {
		if n > 300 && n < len(b)-300 {
			continue // the middle is the big initializer, skipped by offset
		}
		if _, err := readModelIO(bytes.NewReader(b[:n]), int64(n)); err == nil {
			t.Errorf("prefix of %d bytes parsed", n)
		}
	}
}

func TestConcreteShape(t *testing.T) {
	infos := []IOInfo{
		{Name: "a", Shape: []int64{-1, 3}, DimParams: []string{"n", ""}},
		{Name: "b", Shape: []int64{-1, -1}, DimParams: []string{"n", "m"}},
	}
	dims := bindDims(infos, []ortTensor{{Shape: []int64{5, 3}}, {Shape: []int64{5, 7}}})
	for _, c := range []struct {
		info IOInfo
		want []int64
		ok   bool
	}{
		{IOInfo{Shape: []int64{-1, -1, 2}, DimParams: []string{"m", "n", ""}}, []int64{7, 5, 2}, true},
		{IOInfo{Shape: []int64{}, DimParams: []string{}}, []int64{}, true},
		{IOInfo{Shape: []int64{-1}, DimParams: []string{"other"}}, nil, false},
		{IOInfo{Shape: []int64{-1}, DimParams: []string{""}}, nil, false},
		{IOInfo{}, nil, false},
	} {
		got, ok := concreteShape(c.info, dims)
		if ok != c.ok || !slices.Equal(got, c.want) {
			t.Errorf("%+v: got %v %v, want %v %v", c.info, got, ok, c.want, c.ok)
		}
	}
	// Conflicting sizes for one name: not used.
	dims = bindDims(infos, []ortTensor{{Shape: []int64{5, 3}}, {Shape: []int64{6, 7}}})
	if _, ok := concreteShape(IOInfo{Shape: []int64{-1}, DimParams: []string{"n"}}, dims); ok {
		t.Error("conflicting binding was used")
	}
}
