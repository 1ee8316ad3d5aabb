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
		g.op("ScatterND", vs(x, g.in("si", graph.Int64, 1, 1), g.in("su", graph.Float, 1, "seq", 20))), "float32 3 [10,seq,20]",
		g.op("ScatterElements", vs(x, idx, idx)), "float32 3 [10,seq,20]",
	)
	// com.microsoft GatherBlockQuantized: the scales' type; a packed uint8
	// table's last dim times its codes per byte, an int4 table's as it is.
	ms := &graph.Builder{G: g.m.Graph, Domain: "com.microsoft"}
	sc := g.in("sc", graph.Float16, 100, 2)
	g.check(
		ms.Op("GatherBlockQuantized", "gbq4", vs(g.in("q4", graph.Uint8, 100, 32), ids, sc), graph.AttrI("bits", 4)), "float16 3 [batch,seq,64]",
		ms.Op("GatherBlockQuantized", "gbq8", vs(g.in("q8", graph.Uint8, 100, 64), ids, sc), graph.AttrI("bits", 8)), "float16 3 [batch,seq,64]",
		ms.Op("GatherBlockQuantized", "gbqi4", vs(g.in("i4", graph.Int4, 100, 64), ids, sc)), "float16 3 [batch,seq,64]",
	)
}
