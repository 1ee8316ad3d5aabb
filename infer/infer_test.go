package infer

import (
	"math"
	"strings"
	"testing"

	"github.com/loracc/loracc/graph"
)

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

	inf := New()
	want := []graph.Dim{{Param: "batch"}, {Param: "seq"}, {Value: 64}}
	if got := inf.Info(biased).Dims; len(got) != 3 || got[0].Param != "batch" || got[1].Param != "seq" || got[2].Value != 64 {
		t.Errorf("dims(%s) = %v, want %v", biased.Name, got, want)
	}
	for _, tc := range []struct {
		v    *graph.Value
		rank int
	}{{heads, 4}, {flat, 2}, {swapped, 3}, {picked, 2}, {gathered, 4}} {
		if got := inf.Rank(tc.v); got != tc.rank {
			t.Errorf("rank(%s) = %d, want %d", tc.v.Name, got, tc.rank)
		}
	}
	if got := inf.Length1D(last); got != 1 {
		t.Errorf("length(%s) = %d, want 1", last.Name, got)
	}
	if got := inf.Length1D(lead); got != 2 {
		t.Errorf("length(%s) = %d, want 2", lead.Name, got)
	}
	if got := inf.DType(gathered); got != graph.Float {
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
		if got := SliceLen(tc.n, tc.start, tc.end, tc.step); got != tc.want {
			t.Errorf("SliceLen(%d, %d, %d, %d) = %d, want %d", tc.n, tc.start, tc.end, tc.step, got, tc.want)
		}
	}
}
