package trainstep

import (
	"slices"
	"testing"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/memplan"
)

// TestScheduleBeforeTheLoss: a backward node made from forward values
// alone (t = Transpose(a), a kept anyway for the backward) but written
// after the gradient chain is moved before every node computed from the
// loss, so ONNX Runtime's order (memplan's) computes it next to its
// reader instead of at the start of the backward, where it lived beside
// a through the whole chain: the planned peak falls.
func TestScheduleBeforeTheLoss(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	vec := &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 32}, {Value: 32}}}
	x := g.AddInput("x", vec)
	b := &graph.Builder{G: g}
	a := b.Op("Relu", "a", []*graph.Value{x})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{a}, graph.AttrI("keepdims", 0))
	// The backward: a chain from the loss, then t, written last, beside it.
	seed := b.Op("Add", "seed", []*graph.Value{x, loss})
	c1 := b.Op("Relu", "c1", []*graph.Value{seed})
	c2 := b.Op("Relu", "c2", []*graph.Value{c1})
	c3 := b.Op("Relu", "c3", []*graph.Value{c2})
	ca := b.Op("Mul", "ca", []*graph.Value{c3, a})
	tr := b.Op("Transpose", "t", []*graph.Value{a}, graph.AttrIs("perm", 1, 0))
	y := b.Op("Mul", "y", []*graph.Value{ca, tr})
	y.Type = vec
	g.AddOutput(y)
	loss.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	g.AddOutput(loss)
	before, err := memplan.Plan(g)
	if err != nil {
		t.Fatal(err)
	}
	st := New(Options{}, nil)
	st.loss = loss
	if err := st.Schedule(m); err != nil {
		t.Fatal(err)
	}
	pos := func(v *graph.Value) int {
		p, _ := v.Producer()
		return slices.Index(g.Nodes, p)
	}
	if pos(tr) > pos(seed) {
		t.Errorf("t at %d, after the loss's first descendant at %d", pos(tr), pos(seed))
	}
	after, err := memplan.Plan(g)
	if err != nil {
		t.Fatal(err)
	}
	if !(after.Peak < before.Peak) {
		t.Errorf("planned peak %d bytes after scheduling, %d before: want lower", after.Peak, before.Peak)
	}
}
