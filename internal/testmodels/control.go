package testmodels

import "github.com/loracc/loracc/graph"

// IfGemm has an If whose branches read outer-scope values: with x float32
// [batch, 8] and cond a bool scalar,
//
//	y = cond ? Gemm(x, branch.weight, transB=1) : Gemm(x, other.weight, transB=1)
//
// Both weights ([4,8]) are initializers of the main graph, and the branches
// have no inputs of their own, so a LoRA rewrite has to follow uses into
// subgraphs and resolve names through the enclosing scope. y is float32
// [batch, 4].
func IfGemm() (*graph.Model, error) {
	m := newModel("if_gemm")
	g := m.Graph
	c := consts{b: &graph.Builder{G: g}}
	wThen := c.add(weight("branch.weight", graph.Float, 4, 8))
	wElse := c.add(weight("other.weight", graph.Float, 4, 8))
	if c.err != nil {
		return nil, c.err
	}
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(8)))
	cond := g.AddInput("cond", tensorType(graph.Bool))

	b := &graph.Builder{G: g, Prefix: "if"}
	y := b.Op("If", "y", []*graph.Value{cond})
	y.Type = tensorType(graph.Float, batch, fixed(4))
	ifNode, _ := y.Producer()
	branch := func(attr, prefix, out string, w *graph.Value) {
		sg := ifNode.NewSubgraph(attr, attr)
		sb := &graph.Builder{G: sg, Prefix: prefix}
		o := sb.Op("Gemm", out, []*graph.Value{x, w}, graph.AttrI("transB", 1))
		o.Type = tensorType(graph.Float, batch, fixed(4))
		sg.AddOutput(o)
	}
	branch("then_branch", "if/then", "then.y", wThen)
	branch("else_branch", "if/else", "else.y", wElse)
	g.AddOutput(y)
	return m, nil
}
