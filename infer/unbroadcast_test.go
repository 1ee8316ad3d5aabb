package infer_test

import (
	"testing"

	"github.com/loracc/loracc/graph"
)

// runtimeUnbroadcasts lists the nodes of g that undo broadcasting at run
// time: NonZero (finding the axes where two shapes differ) and ReduceSum
// whose axes input is computed rather than constant. autodiff emits them
// only where the inferer cannot see a shape, so their number measures
// what inference misses.
func runtimeUnbroadcasts(g *graph.Graph) []*graph.Node {
	var out []*graph.Node
	g.Walk(func(n *graph.Node) {
		switch {
		case n.Op == "NonZero":
			out = append(out, n)
		case n.Op == "ReduceSum" && n.Input(1) != nil && graph.ConstTensor(n.Input(1)) == nil:
			out = append(out, n)
		}
	})
	return out
}

// TestNoRuntimeUnbroadcast: the tiny GPT-2's training graph (rank 2, lm
// loss) undoes every broadcast with static axes.
func TestNoRuntimeUnbroadcast(t *testing.T) {
	m := loadModel(t, "gpt2_tiny")
	if err := compileTrain("gpt2_tiny", m); err != nil {
		t.Fatal(err)
	}
	// Before GatherElements had dims, the lm loss's masked Mul needed one
	// NonZero and one ReduceSum on computed axes.
	const limit = 0
	nodes := runtimeUnbroadcasts(m.Graph)
	for _, n := range nodes {
		t.Logf("run-time un-broadcast: %s %q reads %q", n.Op, n.Name, n.Input(0).Name)
	}
	if len(nodes) > limit {
		t.Errorf("%d run-time un-broadcast nodes, want at most %d", len(nodes), limit)
	}
}
