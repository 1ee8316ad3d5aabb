package trainstep

import (
	"github.com/loracc/loracc/graph"
)

// recomputeExpansions is part of --recompute attention: a forward value
// the backward reads that is a broadcast copy of a smaller one — the keys
// and values of grouped-query attention, repeat_kv's Expand of each
// key/value head to its query heads, then Reshape and Transpose — is
// recomputed in the backward from the smaller value by the same
// data-movement nodes, instead of being kept. On the 1B Llama (8
// key/value heads for 32, 8 × 512, float32) the expanded K and V are
// 32 MiB a layer each against 8 for the unexpanded, 768 MiB in all; the
// copies cost two Expands a layer where the backward needs them. The copy
// reads u + 0·d (waitOn) like the attention's, so it runs next to its use
// and ONNX Runtime cannot merge it into the forward; the values are the
// forward's bit for bit.
func (st *Compiler) recomputeExpansions(m *graph.Model, fwd map[*graph.Node]bool) (int, error) {
	if st.opts.Static == nil {
		// Static steps only: there the broadcast's size is known. (In a
		// dynamic fp16 step on the CPU the copies, exact as they are,
		// moved the gradient norm in its fourth digit: ORT's CPU float16
		// path, not understood yet.)
		return 0, nil
	}
	g := m.Graph
	pos, late, b, err := st.recomputeSetup(m)
	if err != nil {
		return 0, err
	}
	count := 0
	for _, n := range append([]*graph.Node(nil), g.Nodes...) {
		if !fwd[n] || !st.movementOp(n) {
			continue
		}
		v := n.Output(0)
		var back []graph.Use // a Shape reads dims only (specialize folds it)
		for _, use := range backwardUses(v, fwd) {
			if use.Node.Op != "Shape" {
				back = append(back, use)
			}
		}
		if len(back) == 0 {
			continue
		}
		// Walk up through data movement to the value before the last
		// Expand that broadcasts; chain is the nodes from there down to v.
		var chain []*graph.Node
		var u *graph.Value
		for p := n; p != nil && st.movementOp(p) && fwd[p]; {
			chain = append([]*graph.Node{p}, chain...)
			if p.Op == "Expand" && st.broadcasts(p) {
				u = p.Input(0)
				break
			}
			p, _ = p.Input(0).Producer()
		}
		if u == nil || graph.ConstTensor(u) != nil {
			continue
		}
		// The copy waits on a value a late reader reads. A reader made
		// from forward values alone (the transpose of K that dQ = dS·K
		// reads, Vᵀ for dP = dO·Vᵀ) stands for its own readers; d must
		// not be computed from any reader of v (a cycle).
		own := map[*graph.Value]bool{v: true}
		var lateUses []graph.Use
		for frontier := back; len(frontier) > 0; {
			use := frontier[0]
			frontier = frontier[1:]
			if readsLate(use.Node, late) {
				lateUses = append(lateUses, use)
				continue
			}
			for _, o := range use.Node.Outputs() {
				if o != nil && !own[o] {
					own[o] = true
					frontier = append(frontier, o.Uses()...)
				}
			}
		}
		if len(lateUses) == 0 {
			continue
		}
		d := dependency(own, lateUses, pos, late)
		if d == nil || descendants(back)[d] {
			continue
		}
		if err := copyChain(g, b, u, d, chain, back); err != nil {
			return count, err
		}
		count++
	}
	if count > 0 {
		return count, g.SortTopo()
	}
	return 0, nil
}

// movementOp reports whether n only moves or copies its first input's
// elements: its other inputs, if any, are constants or int64 values
// (shapes, axes: tiny, and kept for the copy).
func (st *Compiler) movementOp(n *graph.Node) bool {
	if n.Domain != "" || n.NumInputs() == 0 || n.Input(0) == nil || len(n.Outputs()) != 1 {
		return false
	}
	switch n.Op {
	case "Expand", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity":
	default:
		return false
	}
	for i := 1; i < n.NumInputs(); i++ {
		if in := n.Input(i); in != nil && graph.ConstTensor(in) == nil && st.inf.DType(in) != graph.Int64 {
			return false
		}
	}
	return true
}

// broadcasts reports whether Expand node n makes, or may make, its input
// larger: an output dim known to be larger than the input's (a dim of 1,
// or one the input lacks), or unknown where the input's is 1 — as in
// torch.onnx's repeat_kv, whose target shape is computed while the model
// runs (the dims are folded only later, by specialize). Expand never
// shrinks an axis, so an unknown dim elsewhere cannot undo the growth;
// and a copy of an Expand that turned out not to grow is still exact,
// only not a saving.
func (st *Compiler) broadcasts(n *graph.Node) bool {
	in, out := st.inf.Info(n.Input(0)), st.inf.Info(n.Output(0))
	if in.Rank < 0 || out.Rank < in.Rank || len(in.Dims) != in.Rank {
		return false
	}
	if len(out.Dims) != out.Rank {
		out.Dims = make([]graph.Dim, out.Rank) // all unknown
	}
	off := out.Rank - in.Rank
	for i, od := range out.Dims {
		larger := !od.Known() || od.Value > 1
		if i < off && larger {
			return true // a new leading axis
		}
		if i >= off && in.Dims[i-off].Known() && in.Dims[i-off].Value == 1 && larger {
			return true
		}
	}
	return false
}

// readsLate says whether one of n's inputs is late (lateValues).
func readsLate(n *graph.Node, late map[*graph.Value]bool) bool {
	for _, in := range n.Inputs() {
		if in != nil && late[in] {
			return true
		}
	}
	return false
}
