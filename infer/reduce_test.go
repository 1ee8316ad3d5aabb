package infer

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestInferReductions(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, 2, "seq", 4)
	axes := g.op("Shape", vs(x), graph.AttrI("start", 2)) // computed axes
	g.check(
		g.op("ReduceSum", vs(x, g.ints(1))), "float32 3 [2,1,4]",
		g.op("ReduceSum", vs(x, g.ints(-1)), graph.AttrI("keepdims", 0)), "float32 2 [2,seq]",
		g.op("ReduceMean", vs(x), graph.AttrIs("axes", 0, 2), graph.AttrI("keepdims", 0)), "float32 1 [seq]",
		g.op("ReduceMax", vs(x)), "float32 3 [1,1,1]",
		// all axes, no keepdims: a scalar whose dims stay nil
		g.op("ReduceL2", vs(x), graph.AttrI("keepdims", 0)), "float32 0 -",
		g.op("ReduceSum", vs(x, g.ints()), graph.AttrI("noop_with_empty_axes", 1)), "float32 3 [2,seq,4]",
		g.op("ReduceSum", vs(x, axes)), "float32 3 [~,~,~]",
		g.op("ReduceSum", vs(x, axes), graph.AttrI("keepdims", 0)), "float32 -1 -",
		g.op("ReduceSumSquare", vs(x, g.ints(3))), "float32 3 [~,~,~]", // axis out of range
		g.op("ReduceLogSumExp", vs(g.in("any", graph.Float, "?"), g.ints(0))), "float32 -1 -",
	)
}
