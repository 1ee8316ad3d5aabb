package runtime

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/graph/onnxpb"
)

func TestAddSymbolicBatch(t *testing.T) {
	env := openEnv(t)
	s := openSession(t, env, addModel().write(t), SessionOptions{})
	// Two batch sizes through one session: the shapes really are dynamic.
	for _, batch := range []int64{2, 5} {
		n := int(batch * 3)
		x, y, want := make([]float32, n), make([]float32, n), make([]float32, n)
		for i := range n {
			x[i], y[i] = float32(i), float32(10*i)+0.5
			want[i] = x[i] + y[i]
		}
		out, err := s.Run(map[string]Tensor{
			"x": FloatTensor([]int64{batch, 3}, x),
			"y": FloatTensor([]int64{batch, 3}, y),
		}, []string{"z"})
		if err != nil {
			t.Fatal(err)
		}
		z := out["z"]
		if !slices.Equal(z.Shape, []int64{batch, 3}) {
			t.Errorf("batch %d: shape %v", batch, z.Shape)
		}
		if got := mustFloats(t, z); !slices.Equal(got, want) {
			t.Errorf("batch %d: got %v, want %v", batch, got, want)
		}
	}
}

func TestReduceSumScalarOutput(t *testing.T) {
	env := openEnv(t)
	g := graphSpec{
		nodes:   []*onnxpb.NodeProto{node("ReduceSum", []string{"x"}, []string{"s"}, intAttr("keepdims", 0))},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "n", 2)},
		outputs: []*onnxpb.ValueInfoProto{vi("s", graph.Float)}, // rank 0
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	out, err := s.Run(map[string]Tensor{"x": FloatTensor([]int64{3, 2}, []float32{1, 2, 3, 4, 5, 6.5})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := out["s"]
	if len(sum.Shape) != 0 {
		t.Errorf("shape %v, want scalar", sum.Shape)
	}
	if got := mustFloats(t, sum); !slices.Equal(got, []float32{21.5}) {
		t.Errorf("got %v, want [21.5]", got)
	}
}

func TestInt64(t *testing.T) {
	env := openEnv(t)
	// c = a * b + k, with k an int64 scalar input.
	g := graphSpec{
		nodes: []*onnxpb.NodeProto{
			node("Mul", []string{"a", "b"}, []string{"ab"}),
			node("Add", []string{"ab", "k"}, []string{"c"}),
		},
		inputs: []*onnxpb.ValueInfoProto{
			vi("a", graph.Int64, "n"), vi("b", graph.Int64, "n"), vi("k", graph.Int64),
		},
		outputs: []*onnxpb.ValueInfoProto{vi("c", graph.Int64, "n")},
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	big := int64(1) << 40 // beyond int32 and float32 precision
	out, err := s.Run(map[string]Tensor{
		"a": Int64Tensor([]int64{3}, []int64{1, -2, big}),
		"b": Int64Tensor([]int64{3}, []int64{7, 8, 3}),
		"k": Int64Tensor(nil, []int64{5}),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := out["c"].Int64s()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{12, -11, 3*big + 5}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestInputsOutputs(t *testing.T) {
	env := openEnv(t)
	w := &onnxpb.TensorProto{
		Name: proto.String("w"), Dims: []int64{3}, DataType: proto.Int32(int32(graph.Float)),
		FloatData: []float32{1, 2, 3},
	}
	g := graphSpec{
		nodes: []*onnxpb.NodeProto{
			node("Add", []string{"x", "w"}, []string{"y"}),
			node("ReduceSum", []string{"y"}, []string{"s"}, intAttr("keepdims", 0)),
			node("Cast", []string{"y"}, []string{"h"}, intAttr("to", int64(graph.Float16))),
		},
		// w is both an input and an initializer: an optional override,
		// which ORT does not require and Inputs does not list.
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "batch", nil, 3), vi("w", graph.Float, 3)},
		outputs: []*onnxpb.ValueInfoProto{vi("y", graph.Float, noShape{}), vi("s", graph.Float), vi("h", graph.Float16, "batch", nil, 3)},
		inits:   []*onnxpb.TensorProto{w},
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	want := []IOInfo{{Name: "x", DType: graph.Float, Shape: []int64{-1, -1, 3}, DimParams: []string{"batch", "", ""}}}
	if got := s.Inputs(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Inputs() = %+v, want %+v", got, want)
	}
	wantOut := []IOInfo{
		{Name: "y", DType: graph.Float},
		{Name: "s", DType: graph.Float, Shape: []int64{}, DimParams: []string{}},
		{Name: "h", DType: graph.Float16, Shape: []int64{-1, -1, 3}, DimParams: []string{"batch", "", ""}},
	}
	got := s.Outputs()
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", wantOut) {
		t.Errorf("Outputs() = %+v, want %+v", got, wantOut)
	}
	if got[0].Shape != nil || got[1].Shape == nil {
		t.Errorf("unknown rank must be a nil Shape and a scalar an empty one: %#v %#v", got[0].Shape, got[1].Shape)
	}
	got[2].Shape[0] = 99 // callers may not change the session's copy
	if s.Outputs()[2].Shape[0] != -1 {
		t.Error("Outputs() shares its slices with the session")
	}
}

func TestConcurrentRun(t *testing.T) {
	env := openEnv(t)
	add := openSession(t, env, addModel().write(t), SessionOptions{IntraOpThreads: 1})
	// sum runs through the other path (an IoBinding with a preallocated
	// scalar), because its float16 output h cannot be allocated by ORT.
	sum := openSession(t, env, sumModel().write(t), SessionOptions{})
	const goroutines, runs = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for r := range runs {
				if err := concurrentStep(add, sum, g, r); err != nil {
					errs <- fmt.Errorf("goroutine %d run %d: %w", g, r, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func concurrentStep(add, sum *Session, g, r int) error {
	batch := int64(1 + (g+r)%4)
	n := int(batch * 3)
	x, y := make([]float32, n), make([]float32, n)
	var total float32
	for i := range n {
		x[i], y[i] = float32(g*1000+r), float32(i)
		total += x[i]
	}
	if r%2 == 1 {
		out, err := sum.Run(map[string]Tensor{"x": FloatTensor([]int64{int64(n)}, x)}, []string{"s"})
		if err != nil {
			return err
		}
		s, err := out["s"].Floats()
		if err != nil {
			return err
		}
		if len(s) != 1 || s[0] != total {
			return fmt.Errorf("s = %v, want %v", s, total)
		}
		return nil
	}
	out, err := add.Run(map[string]Tensor{
		"x": FloatTensor([]int64{batch, 3}, x),
		"y": FloatTensor([]int64{batch, 3}, y),
	}, []string{"z"})
	if err != nil {
		return err
	}
	z, err := out["z"].Floats()
	if err != nil {
		return err
	}
	for i := range n {
		if z[i] != x[i]+y[i] {
			return fmt.Errorf("z[%d] = %v, want %v", i, z[i], x[i]+y[i])
		}
	}
	return nil
}

// sumModel has s = ReduceSum(x), a scalar, and h = Cast<float16>(x) with no
// declared shape.
func sumModel() graphSpec {
	return graphSpec{
		nodes: []*onnxpb.NodeProto{
			node("Cast", []string{"x"}, []string{"h"}, intAttr("to", int64(graph.Float16))),
			node("ReduceSum", []string{"x"}, []string{"s"}, intAttr("keepdims", 0)),
		},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "n")},
		outputs: []*onnxpb.ValueInfoProto{vi("h", graph.Float16, noShape{}), vi("s", graph.Float)},
	}
}

func TestMisalignedInput(t *testing.T) {
	env := openEnv(t)
	s := openSession(t, env, addModel().write(t), SessionOptions{})
	x := FloatTensor([]int64{1, 3}, []float32{1, 2, 3})
	buf := append([]byte{0}, x.Data...)
	odd := Tensor{DType: graph.Float, Shape: x.Shape, Data: buf[1:]} // not 4-byte aligned
	out, err := s.Run(map[string]Tensor{"x": odd, "y": x}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustFloats(t, out["z"]); !slices.Equal(got, []float32{2, 4, 6}) {
		t.Errorf("got %v", got)
	}
}

func TestNotONNX(t *testing.T) {
	env := openEnv(t)
	dir := t.TempDir()
	cases := map[string][]byte{
		"text":      []byte("this is not an onnx model\n"),
		"binary":    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"truncated": addModel().bytes(t)[:40],
		"empty":     {},
		"no graph":  mustMarshal(t, &onnxpb.ModelProto{IrVersion: proto.Int64(10)}),
	}
	for name, data := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".onnx")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := env.NewSession(p, SessionOptions{})
		if err == nil {
			s.Close()
			t.Errorf("%s: NewSession succeeded", name)
		} else if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error does not name the file: %v", name, err)
		}
		if s, err := env.NewSessionFromBytes(data, SessionOptions{}); err == nil {
			s.Close()
			t.Errorf("%s: NewSessionFromBytes succeeded", name)
		}
	}
	if _, err := env.NewSession(filepath.Join(dir, "missing.onnx"), SessionOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCloseTwice(t *testing.T) {
	env, err := Open(findLib(t))
	if err != nil {
		t.Fatal(err)
	}
	s, err := env.NewSession(addModel().write(t), SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Close(); err == nil || !strings.Contains(err.Error(), "still open") {
		t.Errorf("closing the env under an open session: got %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second session Close: %v", err)
	}
	_, err = s.Run(map[string]Tensor{
		"x": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
		"y": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
	}, nil)
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: got %v, want ErrClosed", err)
	}
	if err := env.Close(); err != nil {
		t.Fatal(err)
	}
	if err := env.Close(); err != nil {
		t.Fatalf("second env Close: %v", err)
	}
	if _, err := env.NewSession(addModel().write(t), SessionOptions{}); err == nil {
		t.Error("NewSession on a closed env succeeded")
	}
}

func TestOpenTwice(t *testing.T) {
	env1 := openEnv(t)
	lib := env1.LibraryPath()
	// Same library by another spelling: shares the environment.
	env2, err := Open(filepath.Join(filepath.Dir(lib), ".", filepath.Base(lib)))
	if err != nil {
		t.Fatal(err)
	}
	if env2.Version() != env1.Version() || env1.Version() == "" {
		t.Errorf("versions %q and %q", env1.Version(), env2.Version())
	}
	t.Cleanup(func() { // runs after the session's cleanup below
		if err := env2.Close(); err != nil {
			t.Error(err)
		}
	})
	s := openSession(t, env2, addModel().write(t), SessionOptions{})
	if _, err := s.Run(map[string]Tensor{
		"x": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
		"y": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
	}, nil); err != nil {
		t.Fatal(err)
	}

	// A different library file while one is loaded: refused, clearly.
	other := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	data, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if env3, err := Open(other); err == nil {
		env3.Close()
		t.Fatal("opening a second library succeeded")
	} else if !strings.Contains(err.Error(), "already loaded") {
		t.Errorf("unclear error: %v", err)
	}
}

func TestFloat16(t *testing.T) {
	env := openEnv(t)
	// h = Cast<fp16>(x) + b: fp16 in and out, output shape derived from
	// the input's "n".
	g := graphSpec{
		nodes: []*onnxpb.NodeProto{
			node("Cast", []string{"x"}, []string{"xh"}, intAttr("to", int64(graph.Float16))),
			node("Add", []string{"xh", "b"}, []string{"h"}),
			node("Cast", []string{"h"}, []string{"f"}, intAttr("to", int64(graph.Float))),
		},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "n", 2), vi("b", graph.Float16, "n", 2)},
		outputs: []*onnxpb.ValueInfoProto{vi("h", graph.Float16, "n", 2), vi("f", graph.Float, "n", 2)},
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	x := []float32{1, 2.5, -3, 0.25}
	b := []float32{0.5, 0.5, 1, -2}
	want := []float32{1.5, 3, -2, -1.75}
	out, err := s.Run(map[string]Tensor{
		"x": FloatTensor([]int64{2, 2}, x),
		"b": {DType: graph.Float16, Shape: []int64{2, 2}, Data: f16Bytes(b)},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h := out["h"]; h.DType != graph.Float16 || !slices.Equal(h.Shape, []int64{2, 2}) || !slices.Equal(h.Data, f16Bytes(want)) {
		t.Errorf("h = %v %v %x, want float16 [2 2] %x", h.DType, h.Shape, h.Data, f16Bytes(want))
	}
	if got := mustFloats(t, out["f"]); !slices.Equal(got, want) {
		t.Errorf("f = %v, want %v", got, want)
	}
}

// f16Bytes encodes values exactly representable as float16 (normal numbers
// and zero only: enough for tests).
func f16Bytes(vals []float32) []byte {
	var out []byte
	for _, v := range vals {
		bits := math.Float32bits(v)
		sign := uint16(bits>>31) << 15
		var h uint16
		if v != 0 {
			exp := int(bits>>23&0xff) - 127 + 15
			h = uint16(exp)<<10 | uint16(bits&0x7fffff>>13)
		}
		out = binary.LittleEndian.AppendUint16(out, sign|h)
	}
	return out
}

func TestOutputShapes(t *testing.T) {
	env := openEnv(t)
	// y has no declared shape: ORT allocates it. h is float16 with no
	// declared shape: onnxruntime_go cannot return it, but a run that
	// does not ask for it must still work (through an IoBinding).
	g := graphSpec{
		nodes: []*onnxpb.NodeProto{
			node("Relu", []string{"x"}, []string{"y"}),
			node("Cast", []string{"x"}, []string{"h"}, intAttr("to", int64(graph.Float16))),
			node("ReduceSum", []string{"x"}, []string{"s"}, intAttr("keepdims", 0)),
		},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, "n")},
		outputs: []*onnxpb.ValueInfoProto{vi("y", graph.Float, noShape{}), vi("h", graph.Float16, noShape{}), vi("s", graph.Float)},
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	in := map[string]Tensor{"x": FloatTensor([]int64{4}, []float32{-1, 2, -3, 4})}

	out, err := s.Run(in, []string{"s"})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || !slices.Equal(mustFloats(t, out["s"]), []float32{2}) {
		t.Errorf("only s: got %v", out)
	}

	_, err = s.Run(in, []string{"h"})
	if err == nil || !strings.Contains(err.Error(), `output "h"`) || !strings.Contains(err.Error(), "dim_param") {
		t.Errorf("float16 output of unknown shape: got %v", err)
	}

	// y can only come back through a run of all outputs, which h blocks.
	_, err = s.Run(in, []string{"y"})
	if err == nil || !strings.Contains(err.Error(), `output "y"`) {
		t.Errorf("y next to an unreturnable h: got %v", err)
	}

	// Without h, an unknown-shape float32 output comes back fine.
	g.nodes, g.outputs = g.nodes[:1], g.outputs[:1]
	s2 := openSession(t, env, g.write(t), SessionOptions{})
	out, err = s2.Run(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	if y := out["y"]; !slices.Equal(y.Shape, []int64{4}) || !slices.Equal(mustFloats(t, y), []float32{0, 2, 0, 4}) {
		t.Errorf("y = %v %v", y.Shape, y.Data)
	}
}

func TestDTypes(t *testing.T) {
	env := openEnv(t)
	types := []graph.DataType{
		graph.Float, graph.Float16, graph.BFloat16, graph.Double, graph.Int64,
		graph.Int32, graph.Int8, graph.Uint8, graph.Bool, graph.Uint16,
	}
	g := graphSpec{}
	in := map[string]Tensor{}
	for i, dt := range types {
		x, y := fmt.Sprintf("x%d", i), fmt.Sprintf("y%d", i)
		g.nodes = append(g.nodes, node("Identity", []string{x}, []string{y}))
		g.inputs = append(g.inputs, vi(x, dt, "n", 2))
		g.outputs = append(g.outputs, vi(y, dt, "n", 2))
		data := make([]byte, dt.ByteSize(6))
		for j := range data {
			data[j] = byte(j*7 + i)
			if dt == graph.Bool {
				data[j] &= 1
			}
		}
		in[x] = Tensor{DType: dt, Shape: []int64{3, 2}, Data: data}
	}
	s := openSession(t, env, g.write(t), SessionOptions{DisableOptimizations: true})
	out, err := s.Run(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, dt := range types {
		x, y := in[fmt.Sprintf("x%d", i)], out[fmt.Sprintf("y%d", i)]
		if y.DType != dt || !slices.Equal(y.Shape, x.Shape) || !slices.Equal(y.Data, x.Data) {
			t.Errorf("%s: got %v %v %x, want %v %x", dt, y.DType, y.Shape, y.Data, x.Shape, x.Data)
		}
	}

	// Zero-size tensors pass too.
	for name, tensor := range in {
		tensor.Shape, tensor.Data = []int64{0, 2}, nil
		in[name] = tensor
	}
	out, err = s.Run(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, tensor := range out {
		if !slices.Equal(tensor.Shape, []int64{0, 2}) || len(tensor.Data) != 0 {
			t.Errorf("%s: empty input gave %v with %d bytes", name, tensor.Shape, len(tensor.Data))
		}
	}
}

func TestRunErrors(t *testing.T) {
	env := openEnv(t)
	path := addModel().write(t)
	s := openSession(t, env, path, SessionOptions{})
	x := FloatTensor([]int64{1, 3}, []float32{1, 2, 3})
	cases := []struct {
		name   string
		inputs map[string]Tensor
		outs   []string
		want   string
	}{
		{"missing input", map[string]Tensor{"x": x}, nil, `input "y": missing`},
		{"unknown input", map[string]Tensor{"x": x, "y": x, "q": x}, nil, `input "q"`},
		{"wrong dtype", map[string]Tensor{"x": x, "y": Int64Tensor([]int64{1, 3}, []int64{1, 2, 3})}, nil, `input "y": got int64, the model wants float32`},
		{"short data", map[string]Tensor{"x": x, "y": FloatTensor([]int64{2, 3}, []float32{1})}, nil, `input "y": float32[2 3] needs 24 bytes`},
		{"unknown output", map[string]Tensor{"x": x, "y": x}, []string{"w"}, `output "w"`},
		{"bad dims", map[string]Tensor{"x": x, "y": FloatTensor([]int64{1, 4}, []float32{1, 2, 3, 4})}, nil, "y"},
	}
	for _, c := range cases {
		_, err := s.Run(c.inputs, c.outs)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q should mention %q and the model path", c.name, err, c.want)
		}
	}

	if _, err := env.NewSession(path, SessionOptions{Device: "tpu"}); err == nil || !strings.Contains(err.Error(), "tpu") {
		t.Errorf("unknown device: got %v", err)
	}
}

func TestCUDAUnavailableIsAnError(t *testing.T) {
	env := openEnv(t)
	s, err := env.NewSession(addModel().write(t), SessionOptions{Device: "cuda"})
	if err != nil {
		// The CPU-only library from fetch-ort.sh lands here.
		if !strings.Contains(strings.ToLower(err.Error()), "cuda") {
			t.Errorf("error does not mention cuda: %v", err)
		}
		return
	}
	defer s.Close()
	out, err := s.Run(map[string]Tensor{
		"x": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
		"y": FloatTensor([]int64{1, 3}, []float32{1, 2, 3}),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustFloats(t, out["z"]); !slices.Equal(got, []float32{2, 4, 6}) {
		t.Errorf("cuda: got %v", got)
	}
}

func TestExternalData(t *testing.T) {
	env := openEnv(t)
	dir := t.TempDir()
	w := []float32{10, 20, 30}
	if err := os.WriteFile(filepath.Join(dir, "model.weights"), FloatTensor(nil, w).Data, 0o644); err != nil {
		t.Fatal(err)
	}
	init := &onnxpb.TensorProto{
		Name: proto.String("w"), Dims: []int64{3}, DataType: proto.Int32(int32(graph.Float)),
		DataLocation: onnxpb.TensorProto_EXTERNAL.Enum(),
		ExternalData: []*onnxpb.StringStringEntryProto{
			{Key: proto.String("location"), Value: proto.String("model.weights")},
			{Key: proto.String("length"), Value: proto.String("12")},
		},
	}
	g := graphSpec{
		nodes:   []*onnxpb.NodeProto{node("Add", []string{"x", "w"}, []string{"y"})},
		inputs:  []*onnxpb.ValueInfoProto{vi("x", graph.Float, 3)},
		outputs: []*onnxpb.ValueInfoProto{vi("y", graph.Float, 3)},
		inits:   []*onnxpb.TensorProto{init},
	}
	path := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(path, g.bytes(t), 0o644); err != nil {
		t.Fatal(err)
	}
	s := openSession(t, env, path, SessionOptions{})
	out, err := s.Run(map[string]Tensor{"x": FloatTensor([]int64{3}, []float32{1, 2, 3})}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustFloats(t, out["y"]); !slices.Equal(got, []float32{11, 22, 33}) {
		t.Errorf("got %v", got)
	}
}

func TestNoInputs(t *testing.T) {
	env := openEnv(t)
	c := &onnxpb.AttributeProto{
		Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(),
		T: &onnxpb.TensorProto{Dims: []int64{2}, DataType: proto.Int32(int32(graph.Float)), FloatData: []float32{1.5, -2}},
	}
	g := graphSpec{
		nodes:   []*onnxpb.NodeProto{node("Constant", nil, []string{"c"}, c)},
		outputs: []*onnxpb.ValueInfoProto{vi("c", graph.Float, 2)},
	}
	s := openSession(t, env, g.write(t), SessionOptions{})
	out, err := s.Run(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := mustFloats(t, out["c"]); !slices.Equal(got, []float32{1.5, -2}) {
		t.Errorf("got %v", got)
	}

	g.outputs = []*onnxpb.ValueInfoProto{vi("c", graph.Float, noShape{})}
	s = openSession(t, env, g.write(t), SessionOptions{})
	if _, err := s.Run(nil, nil); err == nil || !strings.Contains(err.Error(), "no inputs") {
		t.Errorf("no inputs and an output of unknown shape: got %v", err)
	}
}

func TestOpenBadLibrary(t *testing.T) {
	findLib(t)
	stub := filepath.Join(t.TempDir(), "libonnxruntime.so.1")
	if err := os.WriteFile(stub, []byte("not a shared library"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{stub, filepath.Join(t.TempDir(), "missing.so")} {
		if env, err := Open(p); err == nil {
			env.Close()
			t.Errorf("Open(%q) succeeded", p)
		} else if !strings.Contains(err.Error(), p) {
			t.Errorf("error does not name the library: %v", err)
		}
	}
	// A failed Open leaves nothing behind: the real library still loads.
	openEnv(t)
}
