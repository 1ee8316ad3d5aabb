package graph

import (
	"strings"
	"testing"
)

// TestPromoteToInputs: initializers become inputs in the order given and
// leave the initializer list; a value that is not an initializer of the
// graph is an error that changes nothing.
func TestPromoteToInputs(t *testing.T) {
	m := NewModel(17)
	g := m.Graph
	var vs []*Value
	for _, name := range []string{"a", "b", "c"} {
		tn, err := NewFloatTensor(name, Float, []int64{1}, []float32{1})
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, g.AddInitializer(tn))
	}
	stranger := g.AddInput("x", &TensorType{DType: Float})
	if err := g.PromoteToInputs(vs[0], stranger); err == nil || !strings.Contains(err.Error(), `"x" not found`) {
		t.Fatalf("promoting a non-initializer: %v", err)
	}
	if len(g.Initializers) != 3 || g.Initializers[0] != vs[0] || g.Initializers[2] != vs[2] || vs[0].Const == nil || len(g.Inputs) != 1 {
		t.Fatalf("a failed promotion changed the graph: %d initializers, %d inputs", len(g.Initializers), len(g.Inputs))
	}
	if err := g.PromoteToInputs(vs[2], vs[0]); err != nil {
		t.Fatal(err)
	}
	if len(g.Initializers) != 1 || g.Initializers[0] != vs[1] {
		t.Errorf("initializers after promotion: %d", len(g.Initializers))
	}
	if len(g.Inputs) != 3 || g.Inputs[1] != vs[2] || g.Inputs[2] != vs[0] || vs[0].Const != nil {
		t.Errorf("inputs after promotion: %v", g.Inputs)
	}
}
