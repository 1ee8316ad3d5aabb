package runtime

import (
	"path/filepath"
	"reflect"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestBoundSessionKeepsValues: outputs bound to device memory come back
// as DeviceValues that feed the next run without a host copy, outputs
// bound to the host are read, and Fetch copies device values out. On the
// CPU provider device memory is host memory; the bookkeeping is the same.
func TestBoundSessionKeepsValues(t *testing.T) {
	e := openEnv(t)
	m := graph.NewModel(17)
	g := m.Graph
	vec := func() *graph.TensorType { return &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 3}}} }
	a, b := g.AddInput("a", vec()), g.AddInput("b", vec())
	bld := &graph.Builder{G: g}
	s := bld.Op("Add", "s", []*graph.Value{a, b})
	p := bld.Op("Mul", "p", []*graph.Value{a, b})
	s.Type, p.Type = vec(), vec()
	g.AddOutput(s)
	g.AddOutput(p)
	path := filepath.Join(t.TempDir(), "m.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	bs, err := e.NewBoundSession(path, SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Close()
	host := map[string]Tensor{"a": FloatTensor([]int64{3}, []float32{1, 2, 3}), "b": FloatTensor([]int64{3}, []float32{4, 5, 6})}
	h, d, err := bs.Run(host, nil, []string{"s"}, []string{"p"})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := h["s"].Floats(); !reflect.DeepEqual(got, []float32{5, 7, 9}) {
		t.Errorf("s = %v", got)
	}
	// p = [4 10 18] stays on the device and is fed back as b.
	h2, d2, err := bs.Run(map[string]Tensor{"a": host["a"]}, map[string]*DeviceValue{"b": d["p"]}, []string{"s", "p"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := h2["s"].Floats(); !reflect.DeepEqual(got, []float32{5, 12, 21}) {
		t.Errorf("second run s = %v", got)
	}
	if len(d2) != 0 {
		t.Errorf("%d device outputs, none asked for", len(d2))
	}
	f, err := bs.Fetch(map[string]*DeviceValue{"p": d["p"]})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := f["p"].Floats(); !reflect.DeepEqual(got, []float32{4, 10, 18}) || !reflect.DeepEqual(f["p"].Shape, []int64{3}) {
		t.Errorf("fetched p = %v %v", got, f["p"].Shape)
	}
	d["p"].Close()
	d["p"].Close() // twice is fine
	if _, _, err := bs.Run(map[string]Tensor{"a": host["a"]}, map[string]*DeviceValue{"b": d["p"]}, []string{"s", "p"}, nil); err == nil {
		t.Error("a released value was fed")
	}
}
