package infer

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestInferBroadcast(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, "batch", "seq", 64)
	bias := g.in("bias", graph.Float, 64)
	mask := g.in("mask", graph.Float, "batch", 1, 1)
	col := g.in("col", graph.Float, 3, 1)
	row := g.in("row", graph.Float, 1, 4)
	a := g.in("a", graph.Float, "a")
	b := g.in("b", graph.Float, "b")
	any := g.in("any", graph.Float, "?")
	cond := g.in("cond", graph.Bool, 3, 4)
	i := g.in("i", graph.Int64, 3, 1)
	g.check(
		g.op("Add", vs(g.op("Mul", vs(x, mask)), bias)), "float32 3 [batch,seq,64]",
		g.op("Sub", vs(col, row)), "float32 2 [3,4]",
		g.op("Max", vs(a, b)), "float32 1 [~]", // different symbols: unknown
		g.op("Sum", vs(a, a, g.in("one", graph.Float, 1))), "float32 1 [a]",
		g.op("Div", vs(x, any)), "float32 -1 -", // an operand of unknown rank
		g.op("Equal", vs(col, row)), "bool 2 [3,4]",
		g.op("And", vs(cond, cond)), "bool 2 [3,4]",
		g.op("Where", vs(cond, col, row)), "float32 2 [3,4]",
		g.op("Pow", vs(col, i)), "float32 2 [3,1]",
		g.op("Mod", vs(i, row)), "int64 2 [3,4]",
		g.op("PRelu", vs(x, bias)), "float32 3 [batch,seq,64]",
	)
}

func TestInferSameShape(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, "batch", 4)
	any := g.in("any", graph.Float, "?")
	i := g.in("i", graph.Int32, 2)
	drop := g.opN("Dropout", 2, vs(x))
	norm := g.opN("LayerNormalization", 3, vs(x, g.in("gamma", graph.Float16, 4)))
	g.check(
		g.op("Relu", vs(x)), "float32 2 [batch,4]",
		g.op("Softmax", vs(g.op("Tanh", vs(x)))), "float32 2 [batch,4]",
		g.op("Cast", vs(x), graph.AttrI("to", int64(graph.Int64))), "int64 2 [batch,4]",
		g.op("CastLike", vs(x, i)), "int32 2 [batch,4]",
		g.op("IsNaN", vs(x)), "bool 2 [batch,4]",
		g.op("Not", vs(g.op("IsInf", vs(x)))), "bool 2 [batch,4]",
		g.op("Clip", vs(x, i, i)), "float32 2 [batch,4]",
		g.op("DequantizeLinear", vs(i, x)), "float32 1 [2]",
		g.op("Exp", vs(any)), "float32 -1 -",
		drop[0], "float32 2 [batch,4]",
		drop[1], "float32 -1 -", // the mask: only its type is derived
		norm[0], "float32 2 [batch,4]",
		norm[1], "float32 2 [batch,1]", // the statistics: 1 from axis on
		norm[2], "float32 2 [batch,1]",
		g.op("Erf", vs(g.in("s", graph.Float))), "float32 0 []",
		g.op("NonZero", vs(x)), "int64 -1 -",
		g.op("ArgMax", vs(x)), "int64 -1 -",
		g.op("Unknown", vs(x)), "float32 -1 -",
	)
}
