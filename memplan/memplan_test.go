package memplan

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestPlanChain: x → a = Relu(x) → r = Reshape(a) → b = Relu(r) → c = Add(a, b)
// keeps a (and its alias r) alive until c, so the peak holds a and b:
// 2 × 4 KiB; the Reshape allocates nothing.
func TestPlanChain(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 32}, {Value: 32}}})
	bl := &graph.Builder{G: g}
	a := bl.Op("Relu", "a", []*graph.Value{x})
	r := bl.Op("Reshape", "r", []*graph.Value{a, bl.Int64s("shape", []int64{1024})})
	b := bl.Op("Relu", "b", []*graph.Value{r})
	c := bl.Op("Add", "c", []*graph.Value{bl.Op("Reshape", "r2", []*graph.Value{a, bl.Int64s("shape2", []int64{1024})}), b})
	c.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1024}}}
	g.AddOutput(c)
	rep, err := Plan(g)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Peak != 2*4096 || rep.Outputs != 4096 || rep.Inputs != 4096 || rep.Unknown != 0 {
		t.Errorf("peak %d, inputs %d, outputs %d, unknown %d; want 8192, 4096, 4096, 0", rep.Peak, rep.Inputs, rep.Outputs, rep.Unknown)
	}
	if len(rep.Holders) != 2 || rep.Holders[0].Name != "a" || rep.Holders[1].Name != "b" {
		t.Errorf("holders %+v, want a and b", rep.Holders)
	}
}
