package infer

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

func TestInferConvPool(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, "n", 3, 32, 32)
	dyn := g.in("dyn", graph.Float, "n", 3, "h", "w")
	w := g.in("w", graph.Float, 8, 3, 3, 3)
	pool := g.opN("MaxPool", 2, vs(x), graph.AttrIs("kernel_shape", 2, 2), graph.AttrIs("strides", 2, 2))
	g.check(
		g.op("Conv", vs(x, w), graph.AttrIs("pads", 1, 1, 1, 1)), "float32 4 [n,8,32,32]",
		g.op("Conv", vs(x, w), graph.AttrIs("strides", 2, 2)), "float32 4 [n,8,15,15]",
		g.op("Conv", vs(x, w), graph.AttrS("auto_pad", "SAME_UPPER"), graph.AttrIs("strides", 2, 2)), "float32 4 [n,8,16,16]",
		g.op("Conv", vs(x, w), graph.AttrIs("dilations", 2, 2)), "float32 4 [n,8,28,28]",
		g.op("Conv", vs(dyn, w), graph.AttrIs("pads", 1, 1, 1, 1)), "float32 4 [n,8,h,w]",
		g.op("Conv", vs(dyn, w)), "float32 4 [n,8,~,~]",
		pool[0], "float32 4 [n,3,16,16]",
		pool[1], "int64 4 [n,3,16,16]",
		g.op("AveragePool", vs(x), graph.AttrIs("kernel_shape", 3, 3), graph.AttrIs("strides", 2, 2), graph.AttrI("ceil_mode", 1)), "float32 4 [n,3,16,16]",
		g.op("LpPool", vs(x), graph.AttrIs("kernel_shape", 3, 3), graph.AttrS("auto_pad", "VALID")), "float32 4 [n,3,30,30]",
		g.op("GlobalAveragePool", vs(dyn)), "float32 4 [n,3,1,1]",
		g.op("GlobalMaxPool", vs(x)), "float32 4 [n,3,1,1]",
		g.op("ConvTranspose", vs(x, w)), "float32 4 [~,~,~,~]",
		g.op("Resize", vs(x)), "float32 4 [~,~,~,~]",
	)
}

func TestInferMatMul(t *testing.T) {
	g := newTG(t)
	x := g.in("x", graph.Float, "batch", "seq", 64)
	w := g.in("w", graph.Float, 64, 32)
	v := g.in("v", graph.Float, 64)
	a := g.in("a", graph.Float, 4, 6)
	b := g.in("b", graph.Float, 4, 5)
	g.check(
		g.op("MatMul", vs(x, w)), "float32 3 [batch,seq,32]",
		g.op("MatMul", vs(g.in("h", graph.Float, 2, 1, 3, 4), g.in("k", graph.Float, 5, 4, 6))), "float32 4 [2,5,3,6]",
		g.op("MatMul", vs(v, w)), "float32 1 [32]",
		g.op("MatMul", vs(x, v)), "float32 2 [batch,seq]",
		g.op("MatMul", vs(v, v)), "float32 0 -",
		g.op("MatMul", vs(x, g.in("any", graph.Float, "?"))), "float32 -1 -",
		g.op("Gemm", vs(a, b), graph.AttrI("transA", 1)), "float32 2 [6,5]",
		g.op("Gemm", vs(b, g.in("c", graph.Float, 6, 5), v), graph.AttrI("transB", 1)), "float32 2 [4,6]",
	)
}
