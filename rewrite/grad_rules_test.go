package rewrite

import (
	"errors"
	"math"
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

// TestInferExporterPatterns: ranks and types the rules need, from the
// index arithmetic torch.onnx emits, with no value_info at all.
func TestInferExporterPatterns(t *testing.T) {
	m := graph.NewModel(18)
	g := m.Graph
	ids := g.AddInput("ids", &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}}})
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: 64}}})
	b := &graph.Builder{G: g}
	i64 := func(xs ...int64) *graph.Value { return b.Int64s("c", xs) }
	op := func(name string, ins []*graph.Value, attrs ...*graph.Attr) *graph.Value {
		return b.Op(name, strings.ToLower(name), ins, attrs...)
	}
	s0 := op("Shape", []*graph.Value{ids}, graph.AttrI("start", 0), graph.AttrI("end", 1))
	s1 := op("Shape", []*graph.Value{ids}, graph.AttrI("start", 1), graph.AttrI("end", 2))
	heads := op("Reshape", []*graph.Value{x, op("Concat", []*graph.Value{s0, s1, i64(-1), i64(16)}, graph.AttrI("axis", 0))})
	// Concat of Unsqueeze'd scalars.
	n0 := op("Unsqueeze", []*graph.Value{op("Squeeze", []*graph.Value{s0}), i64(0)})
	flat := op("Reshape", []*graph.Value{x, op("Concat", []*graph.Value{n0, i64(-1)}, graph.AttrI("axis", 0))})
	// Slices of a shape vector, with INT64_MIN/MAX bounds.
	shp := op("Shape", []*graph.Value{heads})
	last := op("Slice", []*graph.Value{shp, i64(-1), i64(math.MaxInt64)})
	lead := op("Slice", []*graph.Value{shp, i64(math.MinInt64), i64(-2)})
	swapped := op("Reshape", []*graph.Value{heads, op("Concat", []*graph.Value{lead, i64(-1)}, graph.AttrI("axis", 0))})
	// GatherND with indices Concat(Unsqueeze(i, -1), Unsqueeze(j, -1), axis=-1).
	r := op("Range", []*graph.Value{b.Int64s("zero", nil), b.Int64s("three", nil), b.Int64s("one", nil)})
	ij := op("Concat", []*graph.Value{op("Unsqueeze", []*graph.Value{r, i64(-1)}), op("Unsqueeze", []*graph.Value{r, i64(-1)})}, graph.AttrI("axis", -1))
	picked := op("GatherND", []*graph.Value{x, ij})
	// Gather of untyped data takes the data's type, not the indices'.
	untyped := op("Relu", []*graph.Value{op("Identity", []*graph.Value{x})})
	untyped.Type = nil
	gathered := op("Gather", []*graph.Value{op("Tanh", []*graph.Value{untyped}), ids})

	bias := g.AddInput("bias", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: 64}}})
	mask := g.AddInput("mask", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Value: 1}, {Value: 1}}})
	biased := op("Add", []*graph.Value{op("Mul", []*graph.Value{x, mask}), bias})

	inf := newInferer()
	want := []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: 64}}
	if got := inf.info(biased).dims; len(got) != 3 || got[0].Param != "batch" || got[1].Param != "seq" || got[2].Value != 64 {
		t.Errorf("dims(%s) = %v, want %v", biased.Name, got, want)
	}
	for _, tc := range []struct {
		v    *graph.Value
		rank int
	}{{heads, 4}, {flat, 2}, {swapped, 3}, {picked, 2}, {gathered, 4}} {
		if got := inf.rank(tc.v); got != tc.rank {
			t.Errorf("rank(%s) = %d, want %d", tc.v.Name, got, tc.rank)
		}
	}
	if got := inf.length1D(last); got != 1 {
		t.Errorf("length(%s) = %d, want 1", last.Name, got)
	}
	if got := inf.length1D(lead); got != 2 {
		t.Errorf("length(%s) = %d, want 2", lead.Name, got)
	}
	if got := inf.dtype(gathered); got != graph.Float {
		t.Errorf("dtype(%s) = %s, want float32", gathered.Name, got)
	}
}

func TestSliceLen(t *testing.T) {
	for _, tc := range []struct {
		n                int
		start, end, step int64
		want             int
	}{
		{4, -1, math.MaxInt64, 1, 1},
		{4, math.MinInt64, -2, 1, 2},
		{7, -1, -100, -2, 4},
		{5, 100, 0, 1, 0},
		{6, 1, -1, 2, 2},
		{5, -4, 100, 1, 4},
		{3, 0, 3, -1, 0},
		{3, 5, math.MinInt64, -1, 3},
	} {
		if got := sliceLen(tc.n, tc.start, tc.end, tc.step); got != tc.want {
			t.Errorf("sliceLen(%d, %d, %d, %d) = %d, want %d", tc.n, tc.start, tc.end, tc.step, got, tc.want)
		}
	}
}
