package infer

import (
	"math"
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestInferIndexing(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, 10, "seq", 20)
	ids := g.in("ids", graph.Int64, "batch", "seq")
	emb := g.in("emb", graph.Float, 100, 64)
	idx := g.in("idx", graph.Int64, "batch", "seq", 1)
	g.check(
		g.op("Slice", vs(x, g.ints(2), g.ints(5), g.ints(0))), "float32 3 [3,seq,20]",
		g.op("Slice", vs(x, g.ints(0), g.ints(math.MaxInt64), g.ints(1))), "float32 3 [10,seq,20]",
		g.op("Slice", vs(x, g.ints(1), g.ints(math.MaxInt64), g.ints(1))), "float32 3 [10,~,20]",
		g.op("Slice", vs(x, g.ints(-1), g.ints(math.MinInt64), g.ints(2), g.ints(-3))), "float32 3 [10,seq,7]",
		g.op("Slice", vs(x, g.ints(0, 1), g.ints(4, 3))), "float32 3 [4,~,20]",
		g.op("Slice", vs(x, g.op("Shape", vs(x), graph.AttrI("end", 1)), g.ints(3))), "float32 3 [~,~,~]",
		g.op("Slice", vs(x), graph.AttrIs("starts", 1), graph.AttrIs("ends", 3), graph.AttrIs("axes", 2)), "float32 3 [10,seq,2]",
		g.op("Gather", vs(emb, ids)), "float32 3 [batch,seq,64]",
		g.op("Gather", vs(x, g.ints(0, 1)), graph.AttrI("axis", -1)), "float32 3 [10,seq,2]",
		g.op("Gather", vs(g.in("v", graph.Float, 5), g.in("k", graph.Int64))), "float32 0 []",
		g.op("GatherND", vs(x, g.in("nd", graph.Int64, "n", 2))), "float32 2 [~,~]",
		g.op("GatherND", vs(x, g.in("nd2", graph.Int64, "n", "k"))), "float32 -1 -",
		g.op("GatherElements", vs(x, idx), graph.AttrI("axis", 2)), "float32 3 [batch,seq,1]",
		g.op("ScatterND", vs(x, g.in("si", graph.Int64, 1, 1), g.in("su", graph.Float, 1, "seq", 20))), "float32 3 [~,~,~]",
		g.op("ScatterElements", vs(x, idx, idx)), "float32 3 [~,~,~]",
	)
}
