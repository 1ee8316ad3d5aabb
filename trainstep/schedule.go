package trainstep

// Pass "schedule".
//
// Pre:  the last pass that adds or reorders nodes has run (legalize).
// Post: the nodes are in the same topological order except that every
//       node computed without the loss — the forward, and backward values
//       made from forward values alone (a transposed forward tensor, a
//       derivative's factor, the augmented V of fuse-cuda's row-sum fold,
//       the optimizer's bias corrections) — comes before every node
//       computed from it.
//
// Why: ONNX Runtime runs a graph in its GraphViewer's order, a reverse
// depth-first walk from the unread nodes that takes each node's
// latest-written producer first (memplan.ortOrder). A backward value
// made from forward values alone, written after the gradient chain its
// reader also reads (as rules and later passes write it), was therefore
// walked first: computed as soon as the backward began and held through
// it (fuse-cuda's augmented V, 33 MiB a layer of the 1B Llama at 8 × 512,
// 528 MiB in all). Written before the loss's descendants it is walked
// last among its reader's producers, after the gradient chain, so it runs
// next to its use. The seed 1 + 0·loss makes every gradient the loss's
// descendant, so the forward still runs first.

import "github.com/loracc/loracc/graph"

// Schedule is pass "schedule".
func (st *Compiler) Schedule(m *graph.Model) error {
	if st.loss == nil {
		return nil // no backward (the optimizer half of a split step)
	}
	late, err := lateValues(st.loss)
	if err != nil {
		return err
	}
	g := m.Graph
	var before, after []*graph.Node
	for _, n := range g.Nodes {
		fromLoss := false
		for _, o := range n.Outputs() {
			fromLoss = fromLoss || (o != nil && late[o])
		}
		if fromLoss {
			after = append(after, n)
		} else {
			before = append(before, n)
		}
	}
	g.Nodes = append(before, after...)
	return nil
}
