package trainstep

// Rewrite "recompute-attention" of pass autodiff (--recompute attention):
// the backward recomputes each attention's probabilities instead of
// keeping them from the forward.
//
// The probabilities P = softmax(scale·Q·Kᵀ + mask) are the largest
// tensors a transformer's step keeps ([B, H, T, T] per layer, 268 MB per
// layer of a 1B Llama at 8 × 512 in float32), and the backward reads them
// twice (dV = Pᵀ·dO and the softmax gradient). Recomputing them costs one
// Q·Kᵀ product per layer. The copy must run late — next to its first use
// — or it is no better than keeping P, and ONNX Runtime orders nodes
// itself (and would merge an identical copy back into the forward: its
// common-subexpression elimination). So the copy reads Q + 0·d, where d
// is one element of a backward value the first reader of P also reads:
// it cannot start before the backward reaches the attention, and it is not
// the forward's expression. Q + 0 is Q exactly (only a −0 becomes +0, which
// changes no product), so the recomputed P is the forward's, bit for bit.

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/opb"
)

// recomputeAttention rewires the backward readers of every forward
// Softmax computed from a Q·Kᵀ product (through at most a few
// elementwise ops with side inputs: the scale, the mask) to a recomputed
// copy; fwd holds the forward's nodes. It returns how many it rewired.
func (st *Compiler) recomputeAttention(m *graph.Model, fwd map[*graph.Node]bool) (int, error) {
	g := m.Graph
	pos, late, b, err := st.recomputeSetup(m)
	if err != nil {
		return 0, err
	}
	count := 0
	for _, sm := range append([]*graph.Node(nil), g.Nodes...) {
		if sm.Op != "Softmax" || sm.Domain != "" || !fwd[sm] {
			continue
		}
		p := sm.Output(0)
		// P's backward readers, and those of its forward casts (autocast
		// computes P in float32 and casts it down for the P·V product,
		// whose gradient reads the cast).
		own := map[*graph.Value]bool{p: true}
		var back []graph.Use
		var casts []*graph.Node
		for _, u := range p.Uses() {
			if !fwd[u.Node] {
				back = append(back, u)
			} else if u.Node.Op == "Cast" && u.Node.Domain == "" {
				casts = append(casts, u.Node)
				own[u.Node.Output(0)] = true
			}
		}
		all := slices.Clone(back) // every backward reader of P or of its casts
		var castBack [][]graph.Use
		for _, c := range casts {
			cb := backwardUses(c.Output(0), fwd)
			castBack = append(castBack, cb)
			all = append(all, cb...)
		}
		if len(all) == 0 {
			continue
		}
		chain, root, ok := attentionChain(sm, fwd)
		if !ok {
			continue
		}
		d := dependency(own, all, pos, late)
		if d == nil {
			continue
		}
		qDep := waitOn(b, root.Input(0), d)
		if err := b.Err(); err != nil {
			return count, err
		}
		ins := root.Inputs()
		ins[0] = qDep
		prev, err := g.CloneNode(root, ins, ".recomputed")
		if err != nil {
			return count, err
		}
		data := root.Output(0)
		for _, n := range chain {
			ins := n.Inputs()
			for i, in := range ins {
				if in == data {
					ins[i] = prev.Output(0)
				}
			}
			c, err := g.CloneNode(n, ins, ".recomputed")
			if err != nil {
				return count, err
			}
			data, prev = n.Output(0), c
		}
		for _, u := range back {
			u.Node.SetInput(u.Index, prev.Output(0))
		}
		for i, c := range casts {
			if len(castBack[i]) == 0 {
				continue
			}
			cc, err := g.CloneNode(c, []*graph.Value{prev.Output(0)}, ".recomputed")
			if err != nil {
				return count, err
			}
			for _, u := range castBack[i] {
				u.Node.SetInput(u.Index, cc.Output(0))
			}
		}
		count++
	}
	if count > 0 {
		return count, g.SortTopo()
	}
	return 0, nil
}

// attentionChain walks up from Softmax sm to the product Q·Kᵀ it is
// computed from: at most four elementwise ops (scale, mask, bias; a
// masking Where; autocast's Cast), each carrying the scores in one input
// (the other inputs side values: the scale, the mask, the fill). It
// returns the ops from the product's reader down to sm, and the product
// (a MatMul or FusedMatMul of the forward).
func attentionChain(sm *graph.Node, fwd map[*graph.Node]bool) ([]*graph.Node, *graph.Node, bool) {
	chain := []*graph.Node{sm}
	v := sm.Input(0)
	for range 5 {
		p, _ := v.Producer()
		if p == nil || !fwd[p] || dataUses(v) != 1 {
			return nil, nil, false
		}
		switch {
		case (p.Op == "MatMul" && p.Domain == "") || (p.Op == "FusedMatMul" && p.Domain == "com.microsoft"):
			if graph.ConstTensor(p.Input(0)) != nil || graph.ConstTensor(p.Input(1)) != nil {
				return nil, nil, false // a weight product, not Q·Kᵀ
			}
			for i, j := 0, len(chain)-1; i < j; i, j = i+1, j-1 {
				chain[i], chain[j] = chain[j], chain[i]
			}
			return chain, p, true
		case p.Domain == "" && p.Op == "Cast":
			// autocast's cast of the scores up to float32
			chain = append(chain, p)
			v = p.Input(0)
		case p.Domain == "" && (p.Op == "Add" || p.Op == "Sub" || p.Op == "Mul" || p.Op == "Div" || p.Op == "Where"):
			// The scores continue through the input a product or an
			// elementwise op of the chain computes.
			next := scoresInput(p)
			if next == nil {
				return nil, nil, false
			}
			chain = append(chain, p)
			v = next
		default:
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// scoresInput is the input of binary op p that carries the scores: the one
// computed by a product or by another elementwise op (not a constant and
// not the mask, which comes from a Where, a Cast or an input).
func scoresInput(p *graph.Node) *graph.Value {
	var found *graph.Value
	for _, in := range p.Inputs() {
		if in == nil || graph.ConstTensor(in) != nil || !carriesScores(in, 3) {
			continue
		}
		if found != nil {
			return nil // two candidates: not a scores chain
		}
		found = in
	}
	return found
}

// carriesScores says whether v is computed by a product or an elementwise
// op of a scores chain, seen through up to depth casts (a mask is a
// Where's, a Cast's of a comparison or an input's).
func carriesScores(v *graph.Value, depth int) bool {
	q, _ := v.Producer()
	if q == nil {
		return false
	}
	switch q.Op {
	case "MatMul", "FusedMatMul", "Add", "Sub", "Mul", "Div":
		return true
	case "Where":
		return depth > 0 && (carriesScores(q.Input(1), depth-1) || carriesScores(q.Input(2), depth-1))
	case "Cast":
		return depth > 0 && carriesScores(q.Input(0), depth-1)
	}
	return false
}

// dependency picks the backward value d the copy of P waits for: the
// nearest input (not P, not a constant) of P's first backward reader or
// of the nodes computed from it, taken in breadth-first order, that is
// late — computed from the loss, so that it exists only once the
// forward has run to its end (lateValues). A value the backward computes
// from forward values alone (1 − σ of a SiLU gradient) or a forward value
// would not do: the copy could then run, and be kept, from the forward
// on. d must not depend on any reader of P (the copy would close a
// cycle), so it is checked against their descendants.
func dependency(own map[*graph.Value]bool, back []graph.Use, pos map[*graph.Node]int, late map[*graph.Value]bool) *graph.Value {
	first := back[0].Node
	for _, u := range back[1:] {
		if pos[u.Node] < pos[first] {
			first = u.Node
		}
	}
	after := descendants(back) // values computed from a reader of P
	queue, seen := []*graph.Node{first}, map[*graph.Node]bool{first: true}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		for _, in := range r.Inputs() {
			if in != nil && !own[in] && late[in] && graph.ConstTensor(in) == nil && !after[in] {
				return in
			}
		}
		for _, o := range r.Outputs() {
			if o == nil {
				continue
			}
			for _, u := range o.Uses() {
				if !seen[u.Node] {
					seen[u.Node] = true
					queue = append(queue, u.Node)
				}
			}
		}
	}
	return nil
}

// descendants are the values computed, through any nodes, from the
// readers in uses (their outputs included).
func descendants(uses []graph.Use) map[*graph.Value]bool {
	out := map[*graph.Value]bool{}
	stack := make([]*graph.Node, 0, len(uses))
	for _, u := range uses {
		stack = append(stack, u.Node)
	}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, o := range n.Outputs() {
			if o == nil || out[o] {
				continue
			}
			out[o] = true
			for _, u := range o.Uses() {
				stack = append(stack, u.Node)
			}
		}
	}
	return out
}

// lateValues are the values computed, through any nodes, from the loss:
// the backward's (autodiff seeds it with 1 + 0·loss), none of which can
// exist before the forward has run to its end, so a copy that waits for
// one runs in the backward.
func lateValues(loss *graph.Value) (map[*graph.Value]bool, error) {
	if loss == nil {
		return nil, fmt.Errorf("recompute: no loss to order the copies after (pass loss has not run)")
	}
	late := map[*graph.Value]bool{loss: true}
	stack := []*graph.Value{loss}
	for len(stack) > 0 {
		x := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, u := range x.Uses() {
			for _, o := range u.Node.Outputs() {
				if o != nil && !late[o] {
					late[o] = true
					stack = append(stack, o)
				}
			}
		}
	}
	return late, nil
}

// dataUses counts v's readers that read its values: a Shape (the
// backward's un-broadcasting asks for dims, which specialize folds) does
// not.
func dataUses(v *graph.Value) int {
	k := 0
	for _, u := range v.Uses() {
		if u.Node.Op != "Shape" {
			k++
		}
	}
	return k
}

// recomputeActivations rewires the backward readers of cheap activations
// to copies recomputed from their input, which the backward keeps anyway
// or keeps instead of two: σ(x) and x·σ(x) (SiLU, whose gradient reads
// both), and the unary
// Tanh, Gelu, Erf and Relu. Each copy reads x + 0·d like the attention's
// (recomputeAttention), so it runs where the backward needs it; the
// forward's results then die with their forward readers. A 1B Llama keeps
// two [B, T, I] float32 tensors fewer per layer (256 MB at 8 × 512).
func (st *Compiler) recomputeActivations(m *graph.Model, fwd map[*graph.Node]bool) (int, error) {
	g := m.Graph
	pos, late, b, err := st.recomputeSetup(m)
	if err != nil {
		return 0, err
	}
	backward := func(v *graph.Value) []graph.Use { return backwardUses(v, fwd) }
	count := 0
	for _, n := range append([]*graph.Node(nil), g.Nodes...) {
		if !fwd[n] || n.Domain != "" {
			continue
		}
		var x *graph.Value
		var chain []*graph.Node // the nodes to copy, in order
		switch n.Op {
		case "Tanh", "Gelu", "Erf", "Relu":
			x, chain = n.Input(0), []*graph.Node{n}
		case "Sigmoid":
			x, chain = n.Input(0), []*graph.Node{n}
			// x·σ(x) reading this σ: copied with it.
			for _, u := range n.Output(0).Uses() {
				if mul := u.Node; mul.Op == "Mul" && mul.Domain == "" && fwd[mul] && (mul.Input(0) == x || mul.Input(1) == x) {
					chain = append(chain, mul)
				}
			}
		default:
			continue
		}
		if x == nil || graph.ConstTensor(x) != nil {
			continue
		}
		var back []graph.Use
		kept := 0 // the chain's outputs the backward reads
		for _, c := range chain {
			if bs := backward(c.Output(0)); len(bs) > 0 {
				back = append(back, bs...)
				kept++
			}
		}
		// Copying keeps x for the backward: worth it when the backward
		// keeps x anyway, or when x replaces two kept outputs (σ and y of
		// a SiLU, whose gradient reads both but not x).
		if kept == 0 || len(backward(x)) == 0 && kept < 2 {
			continue
		}
		var d *graph.Value
		for _, c := range chain { // a backward value none of the readers computes
			if d = dependency(map[*graph.Value]bool{c.Output(0): true}, back, pos, late); d != nil {
				break
			}
		}
		if d == nil {
			continue
		}
		xDep := waitOn(b, x, d)
		if err := b.Err(); err != nil {
			return count, err
		}
		copies := map[*graph.Value]*graph.Value{x: xDep}
		for _, c := range chain {
			ins := c.Inputs()
			for i, in := range ins {
				if r, ok := copies[in]; ok {
					ins[i] = r
				}
			}
			cl, err := g.CloneNode(c, ins, ".recomputed")
			if err != nil {
				return count, err
			}
			copies[c.Output(0)] = cl.Output(0)
		}
		for _, u := range back {
			if r, ok := copies[u.Node.Input(u.Index)]; ok && !isCopy(u.Node, copies) {
				u.Node.SetInput(u.Index, r)
			}
		}
		count++
	}
	if count > 0 {
		return count, g.SortTopo()
	}
	return 0, nil
}

// copyChain clones chain (each node reading the one before through its
// first input) from waitOn(start, d) and rewires back to read the last
// copy instead.
func copyChain(g *graph.Graph, b *opb.Builder, start, d *graph.Value, chain []*graph.Node, back []graph.Use) error {
	x := waitOn(b, start, d)
	if err := b.Err(); err != nil {
		return err
	}
	for _, c := range chain {
		ins := c.Inputs()
		ins[0] = x
		cl, err := g.CloneNode(c, ins, ".recomputed")
		if err != nil {
			return err
		}
		x = cl.Output(0)
	}
	for _, u := range back {
		u.Node.SetInput(u.Index, x)
	}
	return nil
}

// backwardUses are v's readers outside the forward (fwd).
func backwardUses(v *graph.Value, fwd map[*graph.Node]bool) []graph.Use {
	var out []graph.Use
	for _, u := range v.Uses() {
		if !fwd[u.Node] {
			out = append(out, u)
		}
	}
	return out
}

// isCopy says whether n is one of the copies just made (a copy reads the
// other copies, not the forward's values, already).
func isCopy(n *graph.Node, copies map[*graph.Value]*graph.Value) bool {
	for _, c := range copies {
		if p, _ := c.Producer(); p == n {
			return true
		}
	}
	return false
}

// waitOn is x + 0·d[0]: x's values, computable only once d is.
func waitOn(b *opb.Builder, x, d *graph.Value) *graph.Value {
	one := b.Slice(b.Reshape(d, b.Ints(-1)), 0, 1, 0) // [1]
	return b.Add(x, b.Mul(b.CastTo(one, x), b.K(0, x)))
}

// recomputeSetup is what every recompute rewrite starts from: each
// node's place in the sorted graph, the values computed from the loss
// (lateValues) and the builder the copies' dependencies are made with.
func (st *Compiler) recomputeSetup(m *graph.Model) (map[*graph.Node]int, map[*graph.Value]bool, *opb.Builder, error) {
	pos, err := topoPositions(m.Graph)
	if err != nil {
		return nil, nil, nil, err
	}
	late, err := lateValues(st.loss)
	if err != nil {
		return nil, nil, nil, err
	}
	return pos, late, opb.New(m, "recompute", "recompute", st.inf), nil
}

// topoPositions sorts g and returns each node's place in it.
func topoPositions(g *graph.Graph) (map[*graph.Node]int, error) {
	if err := g.SortTopo(); err != nil {
		return nil, err
	}
	pos := make(map[*graph.Node]int, len(g.Nodes))
	for i, n := range g.Nodes {
		pos[n] = i
	}
	return pos, nil
}
