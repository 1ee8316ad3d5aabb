package runtime

import (
	"math"
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
	// The allocator's statistics are readable (the CPU arena keeps them
	// as ORT's CUDA arena does): some bytes were in use at the peak.
	stats, err := bs.MemoryStats()
	if err != nil {
		t.Fatal(err)
	}
	if stats["MaxInUse"] <= 0 || stats["NumAllocs"] <= 0 {
		t.Errorf("allocator stats %v: want MaxInUse and NumAllocs > 0", stats)
	}
	// Its address is where its data lies (host memory on the CPU; what
	// NCCL sums in place on a GPU), the same each time it is asked.
	a1, err1 := d["p"].Address()
	a2, err2 := d["p"].Address()
	if err1 != nil || err2 != nil || a1 == 0 || a1 != a2 {
		t.Errorf("addresses %#x and %#x, %v, %v", a1, a2, err1, err2)
	}
	d["p"].Close()
	d["p"].Close() // twice is fine
	if _, err := d["p"].Address(); err == nil {
		t.Error("a released value has an address")
	}
	if _, _, err := bs.Run(map[string]Tensor{"a": host["a"]}, map[string]*DeviceValue{"b": d["p"]}, []string{"s", "p"}, nil); err == nil {
		t.Error("a released value was fed")
	}
}

// TestCapturedStep: fed inputs are copied into fixed buffers each run,
// carried tensors are written to a second set and advance only on Commit,
// fetched outputs come back; State reads the current set. (On the CPU
// nothing is captured; the buffers and bindings are the same.)
func TestCapturedStep(t *testing.T) {
	e := openEnv(t)
	m := graph.NewModel(17)
	g := m.Graph
	vec := func() *graph.TensorType { return &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 3}}} }
	x, w := g.AddInput("x", vec()), g.AddInput("w", vec())
	bld := &graph.Builder{G: g}
	loss := bld.Op("ReduceSum", "loss", []*graph.Value{bld.Op("Mul", "xw", []*graph.Value{x, w})}, graph.AttrI("keepdims", 0))
	loss.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	tenth, err := bld.Scalar("tenth", graph.Float, 0.1)
	if err != nil {
		t.Fatal(err)
	}
	wNew := bld.Op("Sub", "w.new", []*graph.Value{w, bld.Op("Mul", "step", []*graph.Value{x, tenth})})
	wNew.Type = vec()
	g.AddOutput(loss)
	g.AddOutput(wNew)
	path := filepath.Join(t.TempDir(), "step.onnx")
	if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	c, err := e.NewCapturedStep(path, SessionOptions{}, StepSpec{Feed: []string{"x"}, Carry: map[string]string{"w": "w.new"}, Fetch: []string{"loss"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Load(map[string]Tensor{"w": FloatTensor([]int64{3}, []float32{1, 1, 1})}); err != nil {
		t.Fatal(err)
	}
	xs := FloatTensor([]int64{3}, []float32{1, 2, 3})
	want := []float32{6, 4.6, 3.2} // sum(x·w) with w ← w − 0.1·x after each committed run
	for i, wl := range want {
		out, err := c.Run(map[string]Tensor{"x": xs})
		if err != nil {
			t.Fatal(err)
		}
		if l, _ := out["loss"].Floats(); len(l) != 1 || math.Abs(float64(l[0]-wl)) > 1e-5 {
			t.Errorf("run %d: loss %v, want %v", i, l, wl)
		}
		if i == 1 {
			// A run not committed leaves the state as it was.
			if again, _ := c.Run(map[string]Tensor{"x": xs}); again == nil {
				t.Fatal("second run failed")
			}
		}
		if err := c.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := st["w"].Floats(); math.Abs(float64(got[0]-0.7)) > 1e-6 || math.Abs(float64(got[2]-0.1)) > 1e-6 {
		t.Errorf("state after 3 commits %v, want [0.7 0.4 0.1]", got)
	}
	if _, err := c.Run(nil); err == nil {
		t.Error("a run without its fed input was accepted")
	}
}

// TestSharedArena: bound sessions with SharedArena allocate from one
// arena: a run of one shows in the other's allocator statistics, and the
// two report the same arena; without it each keeps its own.
func TestSharedArena(t *testing.T) {
	e := openEnv(t)
	dir := t.TempDir()
	model := func(name string, n int64) string {
		m := graph.NewModel(17)
		g := m.Graph
		x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: n}}})
		b := &graph.Builder{G: g}
		ex := b.Op("Exp", "ex", []*graph.Value{x})
		y := b.Op("ReduceSum", "y", []*graph.Value{b.Op("Mul", "sq", []*graph.Value{ex, ex})}, graph.AttrI("keepdims", 0))
		y.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
		g.AddOutput(y)
		path := filepath.Join(dir, name+".onnx")
		if err := graph.Save(m, path, graph.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		return path
	}
	big, small := model("big", 1<<16), model("small", 1<<10)
	run := func(s *BoundSession, n int64) {
		t.Helper()
		if _, _, err := s.Run(map[string]Tensor{"x": FloatTensor([]int64{n}, make([]float32, n))}, nil, []string{"y"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	stats := func(s *BoundSession) map[string]int64 {
		t.Helper()
		m, err := s.MemoryStats()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, shared := range []bool{false, true} {
		opts := SessionOptions{IntraOpThreads: 1, SharedArena: shared}
		a, err := e.NewBoundSession(big, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := e.NewBoundSession(small, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		run(a, 1<<16)
		before := stats(a)
		run(b, 1<<10)
		after := stats(a)
		grew := after["NumAllocs"] > before["NumAllocs"]
		if grew != shared {
			t.Errorf("shared=%v: the big session's arena counted %d allocations before the small one ran, %d after", shared, before["NumAllocs"], after["NumAllocs"])
		}
		if same := reflect.DeepEqual(after, stats(b)); same != shared {
			t.Errorf("shared=%v: the two sessions report %v and %v", shared, after, stats(b))
		}
	}
}
