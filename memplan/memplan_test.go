package memplan

import (
	"strings"
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

// TestPlanFollowsORTOrder: b = Relu(x) is written right after a, but only
// d reads it, after a chain c1..c3 from a; ONNX Runtime's order walks the
// latest-written producer first, so it runs b just before d, and the plan
// holds at most two buffers at once (the file's order would hold b beside
// the chain: three).
func TestPlanFollowsORTOrder(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1024}}})
	bl := &graph.Builder{G: g}
	a := bl.Op("Relu", "a", []*graph.Value{x})
	b := bl.Op("Relu", "b", []*graph.Value{x})
	c := a
	for _, name := range []string{"c1", "c2", "c3"} {
		c = bl.Op("Relu", name, []*graph.Value{c})
	}
	d := bl.Op("Add", "d", []*graph.Value{c, b})
	d.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 1024}}}
	g.AddOutput(d)
	var names []string
	for _, n := range ortOrder(g) {
		names = append(names, n.Output(0).Name)
	}
	if got := strings.Join(names, " "); got != "a c1 c2 c3 b d" {
		t.Errorf("order %s, want a c1 c2 c3 b d", got)
	}
	rep, err := Plan(g)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Peak != 2*4096 {
		t.Errorf("peak %d bytes, want 8192 (two buffers)", rep.Peak)
	}
}
