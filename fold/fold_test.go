package fold

import (
	"math"
	"reflect"
	"testing"

	"github.com/loracc/loracc/graph"
)

func ints(t *testing.T, v *graph.Value) []int64 {
	t.Helper()
	c := graph.ConstTensor(v)
	if c == nil {
		t.Fatalf("%q is not constant", v.Name)
	}
	xs, err := c.Int64s()
	if err != nil {
		t.Fatal(err)
	}
	return xs
}

// TestSpecializeFoldsShapeChain: the shape arithmetic torch.onnx emits for
// a reshape to [batch, seq, heads, -1] folds to one constant once batch
// and seq are known, and the Reshape then reads it; the data path stays.
func TestSpecializeFoldsShapeChain(t *testing.T) {
	m := graph.NewModel(18)
	g := m.Graph
	x := g.AddInput("x", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: 64}}})
	b := &graph.Builder{G: g}
	i64 := func(xs ...int64) *graph.Value { return b.Int64s("c", xs) }
	shape := b.Op("Shape", "s", []*graph.Value{x})
	bt := b.Op("Gather", "bt", []*graph.Value{shape, i64(0, 1)}, graph.AttrI("axis", 0))
	last := b.Op("Slice", "last", []*graph.Value{shape, i64(-1), i64(math.MaxInt64)})
	heads := b.Op("Div", "h", []*graph.Value{last, i64(16)})
	cat := b.Op("Concat", "cat", []*graph.Value{bt, heads, i64(-1)}, graph.AttrI("axis", 0))
	y := b.Op("Reshape", "y", []*graph.Value{x, cat})
	g.AddOutput(y)
	st, err := Specialize(g, map[string]int64{"batch": 2, "seq": 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := ints(t, producer(y).Input(1)); !reflect.DeepEqual(got, []int64{2, 5, 4, -1}) {
		t.Errorf("reshape target %v, want [2 5 4 -1]", got)
	}
	if len(g.Nodes) != 1 || st.Folded != 5 {
		t.Errorf("%d nodes left (want the Reshape), %d folded (want 5)", len(g.Nodes), st.Folded)
	}
	if d := x.Type.Shape; d[0].Value != 2 || d[1].Value != 5 {
		t.Errorf("input dims %v", d)
	}
}

// TestEvalOps checks the evaluator op by op against hand-computed results.
func TestEvalOps(t *testing.T) {
	table := evalTable()
	i64 := func(dims []int64, xs ...int64) *tensor { return &tensor{dt: graph.Int64, dims: dims, i: xs} }
	bools := func(dims []int64, xs ...int64) *tensor { return &tensor{dt: graph.Bool, dims: dims, i: xs} }
	f32 := func(dims []int64, xs ...float64) *tensor { return &tensor{dt: graph.Float, dims: dims, f: xs} }
	node := func(op string, attrs ...*graph.Attr) *graph.Node {
		g := graph.NewModel(18).Graph
		n := g.NewNode(op, op, nil, 1, op)
		n.Attrs = attrs
		return n
	}
	for _, tc := range []struct {
		name string
		n    *graph.Node
		ins  []*tensor
		want *tensor
	}{
		{"Add broadcast", node("Add"), []*tensor{i64([]int64{2, 1}, 1, 2), i64([]int64{3}, 10, 20, 30)}, i64([]int64{2, 3}, 11, 21, 31, 12, 22, 32)},
		{"Div truncates toward zero", node("Div"), []*tensor{i64([]int64{2}, -7, 7), i64([]int64{}, 2)}, i64([]int64{2}, -3, 3)},
		{"Mul keeps INT64_MAX exact", node("Mul"), []*tensor{i64([]int64{1}, math.MaxInt64), i64([]int64{1}, 1)}, i64([]int64{1}, math.MaxInt64)},
		{"Slice to INT64_MAX", node("Slice"), []*tensor{i64([]int64{4}, 1, 2, 3, 4), i64([]int64{1}, -2), i64([]int64{1}, math.MaxInt64)}, i64([]int64{2}, 3, 4)},
		{"Slice backwards with steps", node("Slice"), []*tensor{i64([]int64{5}, 0, 1, 2, 3, 4), i64([]int64{1}, -1), i64([]int64{1}, math.MinInt64), i64([]int64{1}, 0), i64([]int64{1}, -2)}, i64([]int64{3}, 4, 2, 0)},
		{"Slice of a matrix along axis 1", node("Slice"), []*tensor{i64([]int64{2, 3}, 1, 2, 3, 4, 5, 6), i64([]int64{1}, 1), i64([]int64{1}, 3), i64([]int64{1}, 1)}, i64([]int64{2, 2}, 2, 3, 5, 6)},
		{"Gather negative index", node("Gather", graph.AttrI("axis", 0)), []*tensor{i64([]int64{3}, 5, 6, 7), i64([]int64{}, -1)}, i64([]int64{}, 7)},
		{"Gather rows", node("Gather", graph.AttrI("axis", 1)), []*tensor{i64([]int64{2, 3}, 1, 2, 3, 4, 5, 6), i64([]int64{2}, 2, 0)}, i64([]int64{2, 2}, 3, 1, 6, 4)},
		{"Concat axis 1", node("Concat", graph.AttrI("axis", 1)), []*tensor{i64([]int64{2, 1}, 1, 2), i64([]int64{2, 2}, 3, 4, 5, 6)}, i64([]int64{2, 3}, 1, 3, 4, 2, 5, 6)},
		{"Where broadcast", node("Where"), []*tensor{bools([]int64{2}, 1, 0), f32([]int64{}, 1), f32([]int64{2, 2}, 5, 6, 7, 8)}, f32([]int64{2, 2}, 1, 6, 1, 8)},
		{"Expand", node("Expand"), []*tensor{i64([]int64{2, 1}, 1, 2), i64([]int64{2}, 2, 3)}, i64([]int64{2, 3}, 1, 1, 1, 2, 2, 2)},
		{"Range", node("Range"), []*tensor{i64([]int64{}, 5), i64([]int64{}, -1), i64([]int64{}, -2)}, i64([]int64{3}, 5, 3, 1)},
		{"NonZero", node("NonZero"), []*tensor{bools([]int64{2, 2}, 0, 1, 1, 1)}, i64([]int64{2, 3}, 0, 1, 1, 1, 0, 1)},
		{"Reshape 0 and -1", node("Reshape"), []*tensor{i64([]int64{2, 3}, 1, 2, 3, 4, 5, 6), i64([]int64{2}, 0, -1)}, i64([]int64{2, 3}, 1, 2, 3, 4, 5, 6)},
		{"Unsqueeze", node("Unsqueeze"), []*tensor{i64([]int64{2}, 1, 2), i64([]int64{2}, 0, -1)}, i64([]int64{1, 2, 1}, 1, 2)},
		{"Squeeze all ones", node("Squeeze"), []*tensor{i64([]int64{1, 2, 1}, 1, 2)}, i64([]int64{2}, 1, 2)},
		{"Equal", node("Equal"), []*tensor{i64([]int64{3}, 1, 2, 3), i64([]int64{}, 2)}, bools([]int64{3}, 0, 1, 0)},
		{"Cast int to float", node("Cast", graph.AttrI("to", int64(graph.Float))), []*tensor{i64([]int64{2}, 3, -4)}, f32([]int64{2}, 3, -4)},
		{"Max", node("Max"), []*tensor{i64([]int64{2}, 1, 5), i64([]int64{2}, 3, 2)}, i64([]int64{2}, 3, 5)},
		{"CumSum along the last axis", node("CumSum"), []*tensor{i64([]int64{2, 3}, 1, 1, 1, 1, 0, 1), i64([]int64{}, -1)}, i64([]int64{2, 3}, 1, 2, 3, 1, 1, 2)},
		{"CumSum axis 0 exclusive reverse", node("CumSum", graph.AttrI("exclusive", 1), graph.AttrI("reverse", 1)), []*tensor{i64([]int64{3, 1}, 1, 2, 3), i64([]int64{1}, 0)}, i64([]int64{3, 1}, 5, 3, 0)},
		{"GatherND rows", node("GatherND"), []*tensor{i64([]int64{2, 2}, 1, 2, 3, 4), i64([]int64{2, 1}, 1, 0)}, i64([]int64{2, 2}, 3, 4, 1, 2)},
		{"GatherND elements, negative index", node("GatherND"), []*tensor{i64([]int64{2, 2}, 1, 2, 3, 4), i64([]int64{2, 2}, 0, -1, 1, 0)}, i64([]int64{2}, 2, 3)},
		{"GatherND batch_dims 1", node("GatherND", graph.AttrI("batch_dims", 1)), []*tensor{i64([]int64{2, 3}, 1, 2, 3, 4, 5, 6), i64([]int64{2, 2, 1}, 2, 0, 1, 1)}, i64([]int64{2, 2}, 3, 1, 5, 5)},
	} {
		if tc.n.Op == "Slice" {
			tc.n = withConstInputs(t, tc.n, tc.ins)
		}
		got, err := table[tc.n.Op](tc.n, tc.ins)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if !reflect.DeepEqual(got[0], tc.want) {
			t.Errorf("%s: got %+v, want %+v", tc.name, *got[0], *tc.want)
		}
	}
	// Out-of-range indices and division by zero are not folded.
	if _, err := table["Gather"](node("Gather"), []*tensor{i64([]int64{2}, 1, 2), i64([]int64{}, 2)}); err == nil {
		t.Error("Gather past the end folded")
	}
	if _, err := table["GatherND"](node("GatherND"), []*tensor{i64([]int64{2}, 1, 2), i64([]int64{1, 1}, 2)}); err == nil {
		t.Error("GatherND past the end folded")
	}
	if _, err := table["CumSum"](node("CumSum"), []*tensor{f32([]int64{2}, 1, 2), i64([]int64{}, 0)}); err != errNoFold {
		t.Errorf("float CumSum: %v, want errNoFold (float32 running sums round per step)", err)
	}
	if _, err := table["Div"](node("Div"), []*tensor{i64([]int64{1}, 1), i64([]int64{1}, 0)}); err != errNoFold {
		t.Errorf("integer division by zero: %v, want errNoFold", err)
	}
}

func TestDimExpr(t *testing.T) {
	dims := map[string]int64{"batch": 8, "seq": 512, "s0": 3}
	for s, want := range map[string]int64{"seq*batch": 4096, "2*s0": 6, "s0 + 1": 4, "seq//3": 170, "(s0-1)*batch": 16, "batch": 8} {
		if got, ok := dimExpr(s, dims); !ok || got != want {
			t.Errorf("dimExpr(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	for _, s := range []string{"other*batch", "batch*", "", "seq//0", "a b"} {
		if _, ok := dimExpr(s, dims); ok {
			t.Errorf("dimExpr(%q) evaluated", s)
		}
	}
}

func producer(v *graph.Value) *graph.Node {
	n, _ := v.Producer()
	return n
}

// withConstInputs gives a copy of n the inputs ins as initializers (the
// data input left computed), as the folder sees a node whose bounds are
// constants.
func withConstInputs(t *testing.T, n *graph.Node, ins []*tensor) *graph.Node {
	t.Helper()
	g := n.Graph()
	vals := []*graph.Value{g.AddInput("data", &graph.TensorType{DType: ins[0].dt})}
	for _, in := range ins[1:] {
		c, err := in.toGraph("bound")
		if err != nil {
			t.Fatal(err)
		}
		vals = append(vals, g.AddInitializer(c))
	}
	return g.NewNode(n.Op, n.Name+"_const", vals, 1, n.Op)
}
