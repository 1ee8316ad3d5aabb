package branch_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/testmodels"
	"github.com/loracc/loracc/lora"
)

// TestFindAndAdapterRoundTrip: the branches inject adds are found again
// with their tensors in the documented layout, and the adapter read back
// from the model equals the one inject wrote, values and config.
func TestFindAndAdapterRoundTrip(t *testing.T) {
	m, err := testmodels.TransformerBlock()
	if err != nil {
		t.Fatal(err)
	}
	cfg := adapter.NewConfig(2, 8)
	o := &lora.Options{Config: cfg, Init: lora.Init{Method: "gaussian", Seed: 3}}
	if err := lora.Inject(m, o); err != nil {
		t.Fatal(err)
	}
	bs, err := branch.Find(m.Graph)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != len(o.Adapter.Layers) || len(bs) == 0 {
		t.Fatalf("found %d branches, injected %d", len(bs), len(o.Adapter.Layers))
	}
	for i, b := range bs {
		l := o.Adapter.Layers[i]
		if b.Target != l.Name || b.A.Name != branch.AName(l.Name) || b.B.Name != branch.BName(l.Name) || b.Scale == nil || b.Scale.Name != branch.ScaleName(l.Name) {
			t.Errorf("branch %d: target %q, A %q, B %q; layer %q", i, b.Target, b.A.Name, b.B.Name, l.Name)
		}
		ps := branch.Params(l)
		for j, v := range []*graph.Value{b.A, b.B} {
			got, err := v.Const.Floats()
			if err != nil || !reflect.DeepEqual(v.Const.Dims, ps[j].Shape) || !reflect.DeepEqual(got, ps[j].Data) {
				t.Errorf("%s: dims %v, want %v (values equal: %v)", v.Name, v.Const.Dims, ps[j].Shape, reflect.DeepEqual(got, ps[j].Data))
			}
		}
		back, err := branch.FromParams(l, ps[0].Data, ps[1].Data)
		if err != nil || !reflect.DeepEqual(back, l) {
			t.Errorf("FromParams(Params(%q)) differs: %v", l.Name, err)
		}
	}
	got, err := branch.Adapter(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Layers, o.Adapter.Layers) {
		t.Error("adapter read from the model differs from the injected one")
	}
	for _, l := range o.Adapter.Layers {
		if got.Config.Rank(l.Name) != o.Adapter.Config.Rank(l.Name) || got.Config.Scale(l.Name) != o.Adapter.Config.Scale(l.Name) {
			t.Errorf("%s: recovered rank %d scale %g, want %d %g", l.Name, got.Config.Rank(l.Name), got.Config.Scale(l.Name), o.Adapter.Config.Rank(l.Name), o.Adapter.Config.Scale(l.Name))
		}
	}
}

// TestFindRefusesBrokenBranches: a branch with one MatMul or three is an
// error naming it, and a model without branches has none.
func TestFindRefusesBrokenBranches(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}}})
	if bs, err := branch.Find(g); err != nil || len(bs) != 0 {
		t.Fatalf("no branches: %v %v", bs, err)
	}
	b := &graph.Builder{G: g, Metadata: []graph.KV{{Key: branch.Key, Value: "t"}}}
	y := b.Op("MatMul", "y", []*graph.Value{x, x})
	if _, err := branch.Find(g); err == nil || !strings.Contains(err.Error(), `branch "t" is incomplete`) {
		t.Errorf("one MatMul: %v", err)
	}
	y = b.Op("MatMul", "y2", []*graph.Value{y, x})
	b.Op("MatMul", "y3", []*graph.Value{y, x})
	if _, err := branch.Find(g); err == nil || !strings.Contains(err.Error(), `branch "t" has more than two MatMuls`) {
		t.Errorf("three MatMuls: %v", err)
	}
}
