package autodiff

import (
	"errors"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

// TestMissingRulesNamedTogether: every op without a rule between the
// parameters and the loss is reported in one error, with its node name.
func TestMissingRulesNamedTogether(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 2}, {Value: 3}}})
	b := &graph.Builder{G: g}
	h := b.Op("Hardmax", "h", []*graph.Value{a})
	h.Producer()
	custom := (&graph.Builder{G: g, Prefix: "ext", Domain: "com.example"}).Op("Frobnicate", "f", []*graph.Value{a})
	sum := b.Op("Add", "s", []*graph.Value{h, custom})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{sum}, graph.AttrI("keepdims", 0))
	_, err := Gradients(m, loss, []*graph.Value{a})
	if !errors.Is(err, ErrMissingRules) {
		t.Fatalf("err = %v, want ErrMissingRules", err)
	}
	hn, _ := h.Producer()
	fn, _ := custom.Producer()
	for _, want := range []string{`Hardmax (node "` + hn.Name + `")`, `com.example::Frobnicate (node "` + fn.Name + `")`, "2 ops"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// TestNonDifferentiableOpsNeedNoRule: a path through a nil rule (Sign)
// contributes nothing and is not an error.
func TestNonDifferentiableOpsNeedNoRule(t *testing.T) {
	m := graph.NewModel(17)
	g := m.Graph
	a := g.AddInput("a", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 3}}})
	b := &graph.Builder{G: g}
	y := b.Op("Mul", "y", []*graph.Value{a, b.Op("Sign", "s", []*graph.Value{a})})
	loss := b.Op("ReduceSum", "loss", []*graph.Value{y}, graph.AttrI("keepdims", 0))
	grads, err := Gradients(m, loss, []*graph.Value{a})
	if err != nil || grads[0] == nil {
		t.Fatalf("grads %v, err %v", grads, err)
	}
}
