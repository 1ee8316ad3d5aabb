package infer

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestInferShapeOps(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, "batch", "seq", 64)
	shp := g.op("Shape", vs(x))
	i64 := graph.AttrI("to", int64(graph.Int64))
	// Reshape targets from shape arithmetic: Slice, Gather, Cast, Identity,
	// Squeeze/Unsqueeze of one entry, Concat.
	b := g.op("Slice", vs(shp, g.ints(0), g.ints(1)))
	s := g.op("Unsqueeze", vs(g.op("Squeeze", vs(g.op("Gather", vs(shp, g.ints(1))))), g.ints(0)))
	target := g.op("Concat", vs(g.op("Cast", vs(b), i64), g.op("Identity", vs(s)), g.ints(-1, 16)), graph.AttrI("axis", 0))
	g.check(
		shp, "int64 1 [3]",
		g.op("Shape", vs(x), graph.AttrI("start", 1)), "int64 1 [2]",
		g.op("Shape", vs(x), graph.AttrI("start", -1), graph.AttrI("end", 5)), "int64 1 [1]",
		g.op("Shape", vs(g.in("any", graph.Float, "?"))), "int64 1 [~]",
		g.op("Size", vs(x)), "int64 0 -",
		g.op("Reshape", vs(x, target)), "float32 4 [batch,seq,4,16]",
		g.op("Reshape", vs(x, g.ints(0, 0, -1))), "float32 3 [batch,seq,64]",
		g.op("Reshape", vs(x, g.ints(-1, 64))), "float32 2 [~,64]", // batch·seq is no one symbol
		g.op("Reshape", vs(g.in("y", graph.Float, 6, 4), g.ints(3, -1))), "float32 2 [3,8]",
		g.op("Reshape", vs(x, g.ints(0, 0, 8, 8)), graph.AttrI("allowzero", 1)), "float32 4 [0,0,8,8]",
		g.op("Reshape", vs(x, g.op("Shape", vs(x), graph.AttrI("end", 2)))), "float32 2 [batch,seq]",
		g.op("Expand", vs(g.in("col", graph.Float, 3, 1), g.ints(2, 3, 4))), "float32 3 [2,3,4]",
		g.op("Expand", vs(g.in("kv", graph.Float, "batch", 2, 1, "seq", 8), g.ints(1, 1, 4, 1, 1))), "float32 5 [batch,2,4,seq,8]",
		g.op("Expand", vs(g.in("row", graph.Float, 1, 64), g.op("Shape", vs(x)))), "float32 3 [batch,seq,64]",
		g.op("ConstantOfShape", vs(g.ints(2, 3))), "float32 2 [~,~]",
		g.op("ConstantOfShape", vs(shp), graph.AttrT("value", graph.NewTensor("", graph.Int64, []int64{1}, make([]byte, 8)))), "int64 3 [~,~,~]",
		g.op("Range", vs(g.ints(), g.ints(), g.ints())), "int64 1 [~]",
		g.op("Constant", nil, graph.AttrIs("value_ints", 1, 2)), "int64 1 [~]",
		g.op("Constant", nil, graph.AttrF("value_float", 1)), "float32 0 -",
		g.op("Constant", nil, graph.AttrT("value", graph.NewTensor("", graph.Int32, []int64{2, 1}, make([]byte, 8)))), "int32 2 [2,1]",
	)
	inf := New()
	for _, tc := range []struct {
		v    *graph.Value
		want int
	}{
		{shp, 3}, {b, 1}, {s, 1}, {target, 4},
		{g.op("Slice", vs(shp, g.ints(-2), g.ints(100), g.ints(0), g.ints(-1))), 0},
		{g.op("Cast", vs(target), i64), 4},
		{g.op("Unsqueeze", vs(g.in("n", graph.Int64), g.ints(0))), 1},
		{g.op("Gather", vs(shp, g.ints(0, 2))), 2},
		{x, -1},
	} {
		if got := inf.Length1D(tc.v); got != tc.want {
			t.Errorf("Length1D(%s) = %d, want %d", tc.v.Name, got, tc.want)
		}
	}
}

func TestInferLayoutOps(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, 3, "seq")
	ones := g.in("ones", graph.Float, 1, "seq", 1)
	y := g.in("y", graph.Float, 3, 5)
	split := g.opN("Split", 2, vs(y, g.ints(2, 3)), graph.AttrI("axis", 1))
	g.check(
		g.op("Unsqueeze", vs(x, g.ints(0, -1))), "float32 4 [1,3,seq,1]",
		g.op("Unsqueeze", vs(x), graph.AttrIs("axes", 1)), "float32 3 [3,1,seq]",
		g.op("Unsqueeze", vs(x, g.op("Shape", vs(x)))), "float32 -1 -", // computed axes
		g.op("Squeeze", vs(ones, g.ints(0))), "float32 2 [seq,1]",
		g.op("Squeeze", vs(g.in("z", graph.Float, 1, 3, 1))), "float32 1 [3]",
		g.op("Squeeze", vs(ones)), "float32 -1 -", // is seq 1?
		g.op("Concat", vs(x, x, y), graph.AttrI("axis", 1)), "float32 2 [3,~]",
		g.op("Concat", vs(y, y), graph.AttrI("axis", -1)), "float32 2 [3,10]",
		g.op("Concat", vs(x, g.in("x2", graph.Float, 4, "seq")), graph.AttrI("axis", 0)), "float32 2 [7,seq]",
		g.op("Transpose", vs(ones), graph.AttrIs("perm", 1, 0, 2)), "float32 3 [seq,1,1]",
		g.op("Transpose", vs(x)), "float32 2 [seq,3]",
		// invalid nodes infer nothing (and do not panic)
		g.op("Transpose", vs(ones), graph.AttrIs("perm", 1, 0)), "float32 3 [~,~,~]",
		g.op("Unsqueeze", vs(x, g.ints(0, 0))), "float32 4 [~,~,~,~]",
		g.op("Flatten", vs(ones)), "float32 2 [~,~]",
		split[0], "float32 2 [3,2]",
		split[1], "float32 2 [3,3]",
		g.opN("Split", 3, vs(y), graph.AttrI("axis", 1))[2], "float32 2 [3,1]", // equal shares, the last smaller
		g.opN("Split", 2, vs(y, g.op("Shape", vs(y))), graph.AttrI("axis", 0))[0], "float32 2 [~,5]", // computed sizes
		g.op("Pad", vs(y, g.ints(0, 1, 0, 1))), "float32 2 [~,~]",
		g.op("Tile", vs(y, g.ints(2, 1))), "float32 2 [~,~]",
	)
}
