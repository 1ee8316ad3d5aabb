package autodiff

// Reverse-mode automatic differentiation on the IR.
//
// The driver does the work every rule would otherwise repeat: it walks
// only the nodes that lie between the parameters and the loss, in reverse
// topological order; it asks a rule only for the input gradients that are
// needed (an input that does not depend on a parameter gets none, so frozen
// weights cost nothing); it sums the gradients of values read more than
// once; it sums the gradients of broadcasting ops back to their inputs'
// shapes (unbroadcast.go); and it checks the result contract. A nil
// gradient is a symbolic zero: rules receive nil for outputs nothing
// differentiates and return nil for inputs that get nothing, and no zero
// tensors are built.
//
// Rules build through opb, whose errors are sticky: a rule writes its
// formula straight through, records a failure with c.Fail (or a helper
// does), and the driver checks c.Err() once the rule returns.

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// gradRule returns the gradients of n's inputs given those of its outputs
// (nil for none; at least one is set). The result contract: exactly one
// entry per input slot, nil for none; a slot the table marks as
// broadcasting gets a gradient shaped (and typed) like the output, every
// other slot one shaped like its input. Rules consult c.needs(i) to skip
// inputs nobody wants, and report failures through c.Fail.
type gradRule func(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value

// gradCtx is what a rule builds with: the op builder (opset forms, typed
// constants, sticky errors) plus which inputs want a gradient.
type gradCtx struct {
	*opb.Builder
	want  map[*graph.Value]bool // values whose gradient is needed
	node  *graph.Node
	picks map[*graph.Value]pick // gradients that are one value per position along an axis (selectOne)
	silus map[*graph.Node]int   // Mul nodes computing x·σ(x), by the slot of x (gradMul)
	grads map[*graph.Value][]*graph.Value
	fwd   map[*graph.Node]bool // the nodes of the forward graph, as opposed to those rules build
	opts  Options
}

// forwardUses is v's uses by forward nodes.
func (c *gradCtx) forwardUses(v *graph.Value) []graph.Use {
	var us []graph.Use
	for _, u := range v.Uses() {
		if c.fwd[u.Node] {
			us = append(us, u)
		}
	}
	return us
}

// gradOf is the gradient of v: the sum of what v's consumers gave it, nil
// for none. The walk is in reverse topological order, so when a rule
// runs, the gradient of every value computed after its node is complete;
// a rule may read one (gradSoftmax reads its MatMul's output gradient).
func (c *gradCtx) gradOf(v *graph.Value) *graph.Value {
	gs := c.grads[v]
	switch len(gs) {
	case 0:
		return nil
	case 1:
		return gs[0]
	}
	gs = c.concatPads(v, gs)
	s := gs[0]
	if len(gs) > 1 {
		s = c.Named("Sum", v.Name+".grad", gs)
	}
	c.grads[v] = []*graph.Value{s}
	return s
}

// concatPads replaces gradients of v that are zero-padded pieces tiling
// one axis of v — what Slice's rule gives the slices x[..., :h] and
// x[..., h:], as rotary embeddings take them — by their Concat: one copy
// instead of a padded tensor per piece and their sum.
func (c *gradCtx) concatPads(v *graph.Value, gs []*graph.Value) []*graph.Value {
	dims := c.Inf.Info(v).Dims
	type piece struct {
		g          *graph.Value
		begin, len int64
	}
	byAxis := map[int][]piece{}
	for _, g := range gs {
		p, _ := g.Producer()
		if p == nil || p.Op != "Pad" || p.Domain != "" || p.NumInputs() != 2 || g.NumUses() != 0 {
			continue
		}
		if m := p.Attr("mode"); m != nil && string(m.S) != "constant" {
			continue
		}
		pads, ok := graph.ConstInts(p.Input(1))
		if !ok || len(pads) != 2*len(dims) {
			continue
		}
		axis := -1
		for i := range dims {
			if pads[i] != 0 || pads[i+len(dims)] != 0 {
				if axis >= 0 || pads[i] < 0 || pads[i+len(dims)] < 0 || !dims[i].Known() {
					axis = -2
					break
				}
				axis = i
			}
		}
		if axis < 0 {
			continue
		}
		byAxis[axis] = append(byAxis[axis], piece{g, pads[axis], dims[axis].Value - pads[axis] - pads[axis+len(dims)]})
	}
	for _, axis := range slices.Sorted(maps.Keys(byAxis)) {
		ps := byAxis[axis]
		if len(ps) < 2 {
			continue
		}
		slices.SortFunc(ps, func(a, b piece) int { return cmp.Compare(a.begin, b.begin) })
		at := int64(0)
		for _, p := range ps {
			if p.begin != at {
				break
			}
			at += p.len
		}
		if at != dims[axis].Value {
			continue // the pieces overlap or leave a gap
		}
		parts := make([]*graph.Value, len(ps))
		drop := map[*graph.Value]bool{}
		for i, p := range ps {
			pn, _ := p.g.Producer()
			parts[i] = pn.Input(0)
			drop[p.g] = true
		}
		kept := []*graph.Value{c.Concat(int64(axis), parts...)}
		for _, g := range gs {
			if !drop[g] {
				kept = append(kept, g)
			}
		}
		gs = kept
	}
	return gs
}

// pick describes a gradient that is zero except at one position along
// axis per row: at index idx (non-negative) it holds val, shaped like idx.
// Rules reading such a gradient can use val where a dense rule would sum
// or subtract the whole tensor (gradLogSoftmax).
type pick struct {
	idx, val *graph.Value
	axis     int64
}

// needs reports whether input i of the current node wants a gradient.
func (c *gradCtx) needs(i int) bool {
	return c.want[c.node.Input(i)]
}

// failf records an error and returns no gradients, for rules that cannot
// go on: return c.failf(...).
func (c *gradCtx) failf(format string, args ...any) []*graph.Value {
	c.Fail(fmt.Errorf(format, args...))
	return nil
}

// rank is v's static rank; when unknown it records an error naming v and
// returns -1.
func (c *gradCtx) rank(v *graph.Value) int {
	r := c.Inf.Rank(v)
	if r < 0 {
		c.Fail(fmt.Errorf("the rank of %q is not known statically", v.Name))
	}
	return r
}

// ErrMissingRules lists every op between the parameters and the loss that
// has no gradient rule.
var ErrMissingRules = errors.New("no gradient rule")

// Gradients appends to the main graph the computation of d loss / d p for
// every parameter p (graph inputs or initializers of the main graph), and
// returns them in order. A parameter the loss does not depend on gets a
// nil gradient.
func Gradients(m *graph.Model, loss *graph.Value, params []*graph.Value) ([]*graph.Value, error) {
	return GradientsWith(m, loss, params, Options{})
}

// Options adjust Gradients.
type Options struct {
	// NoSiLURule differentiates x·σ(x) through Mul's and Sigmoid's
	// rules instead of as one function (findSiLUs).
	NoSiLURule bool
	// NoCastRowSums keeps the softmax gradient's row sums as Σ gy·y when
	// autocast's Cast stands between the probabilities and P·V, instead
	// of Σ go·o from the cast product (attentionOutput).
	NoCastRowSums bool
	// NoNarrowWeightGrads keeps a narrow matrix's gradient (a LoRA A's)
	// as aᵀ·gy, one Gemm, instead of (gyᵀ·a)ᵀ (weightGrad).
	NoNarrowWeightGrads bool
}

// GradientsWith is Gradients with options.
func GradientsWith(m *graph.Model, loss *graph.Value, params []*graph.Value, o Options) ([]*graph.Value, error) {
	g := m.Graph
	if err := g.SortTopo(); err != nil {
		return nil, err
	}
	rules := gradRules()
	inf := infer.New()
	// Forward: values that depend on a parameter through differentiable ops.
	dep := map[*graph.Value]bool{}
	for _, p := range params {
		dep[p] = true
	}
	for _, n := range g.Nodes {
		if r, known := rules[ruleKey(n)]; known && r.grad == nil {
			continue // non-differentiable: its outputs carry no gradient
		}
		hit := false
		for _, in := range n.Inputs() {
			hit = hit || dep[in]
		}
		for _, sg := range n.Subgraphs() {
			sg.Walk(func(inner *graph.Node) {
				for _, in := range inner.Inputs() {
					hit = hit || dep[in]
				}
			})
		}
		if !hit {
			continue
		}
		for _, o := range n.Outputs() {
			if o != nil && !isDiscrete(inf.DType(o)) {
				dep[o] = true
			}
		}
	}
	if !dep[loss] {
		return make([]*graph.Value, len(params)), nil
	}
	// Backward: values the loss depends on.
	reach := map[*graph.Value]bool{loss: true}
	var active []*graph.Node
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		n := g.Nodes[i]
		out := false
		for _, o := range n.Outputs() {
			out = out || (o != nil && reach[o] && dep[o])
		}
		if !out {
			continue
		}
		active = append(active, n)
		for _, in := range n.Inputs() {
			if in != nil {
				reach[in] = true
			}
		}
	}
	want := map[*graph.Value]bool{}
	for v := range dep {
		if reach[v] {
			want[v] = true
		}
	}
	// Every op on the way needs a rule: report all missing ones at once.
	var missing []string
	for _, n := range active {
		if _, ok := rules[ruleKey(n)]; !ok || len(n.Subgraphs()) > 0 {
			op := ruleKey(n)
			missing = append(missing, fmt.Sprintf("%s (node %q)", op, n.Name))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("autodiff: %w for %d ops between the adapter and the loss: %s", ErrMissingRules, len(missing), strings.Join(missing, ", "))
	}

	silus := map[*graph.Node]int{}
	if !o.NoSiLURule {
		silus = findSiLUs(g, want)
	}
	forward := len(g.Nodes)
	fwd := make(map[*graph.Node]bool, forward)
	for _, n := range g.Nodes {
		fwd[n] = true
	}
	c := &gradCtx{Builder: opb.New(m, "grad", "grad/loss", inf), want: want, picks: map[*graph.Value]pick{}, grads: map[*graph.Value][]*graph.Value{}, fwd: fwd, silus: silus, opts: o}
	grads := c.grads
	// The seed is 1 + 0·loss, not a constant 1: every gradient then depends
	// on the loss's value, so ONNX Runtime finishes the loss before the
	// backward. Its order walks back from the graph's outputs, the latest
	// written first (memplan.ortOrder), and with a constant seed it ran
	// the loss's own last reads of the forward — the gather from the
	// log-probabilities — after the whole backward, keeping those
	// [tokens, vocab] probabilities alive through it (823 MB for GPT-2
	// small at 8 × 512). 1 + 0·loss is 1 exactly for a finite loss.
	one := c.Add(c.Scalar(1, loss), c.Mul(c.Scalar(0, loss), loss))
	if err := c.Err(); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	grads[loss] = []*graph.Value{one}
	for _, n := range active { // active is in reverse topological order
		gys := make([]*graph.Value, len(n.Outputs()))
		any := false
		for i, o := range n.Outputs() {
			if o != nil && want[o] {
				gys[i] = c.gradOf(o)
				any = any || gys[i] != nil
			}
		}
		if !any {
			continue
		}
		needed := false
		for _, in := range n.Inputs() {
			needed = needed || want[in]
		}
		if !needed {
			continue
		}
		c.node = n
		c.Scope = "grad/" + nodeName(n)
		gxs, err := c.apply(rules[ruleKey(n)], n, gys)
		if err != nil {
			return nil, fmt.Errorf("autodiff: node %q (%s): %w", n.Name, n.Op, err)
		}
		for i, gx := range gxs {
			if in := n.Input(i); in != nil && want[in] {
				grads[in] = append(grads[in], gx)
			}
		}
	}
	// Each parameter gets its own value named "<param>.grad": a rule may
	// hand the same value to several inputs (Add of equal shapes), and
	// callers output gradients by name.
	out := make([]*graph.Value, len(params))
	keep := map[*graph.Value]bool{}
	for i, p := range params {
		if g := c.gradOf(p); g != nil {
			out[i] = c.Named("Identity", p.Name+".grad", []*graph.Value{g})
			inf.Set(out[i], inf.Info(p))
			keep[out[i]] = true
		}
	}
	if err := dropDead(g, forward, keep); err != nil {
		return nil, fmt.Errorf("autodiff: %w", err)
	}
	return out, nil
}

// dropDead removes the backward nodes (those after the first forward
// ones) whose outputs nothing reads, except the gradients in keep. A rule
// may read around a gradient an earlier rule built (gradLogSoftmax reads a
// pick's value, not the dense select), which leaves that one unread.
func dropDead(g *graph.Graph, forward int, keep map[*graph.Value]bool) error {
	for i := len(g.Nodes) - 1; i >= forward; i-- {
		n := g.Nodes[i]
		used := false
		for _, o := range n.Outputs() {
			used = used || (o != nil && (o.NumUses() > 0 || o.IsGraphOutput() || keep[o]))
		}
		if !used {
			if err := g.RemoveNode(n); err != nil {
				return err
			}
		}
	}
	return nil
}

// apply runs r on n and enforces the result contract: one gradient per
// input slot, and one for every input that wants it. It sums the
// broadcasting slots' gradients down to their inputs' shapes (and casts
// them to the inputs' types where these differ from the output's, as
// Pow's exponent may), all of them before any is recorded, and records
// each gradient's type and shape, which later rules read.
func (c *gradCtx) apply(r rule, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gxs := r.grad(c, n, gys)
	if err := c.Err(); err != nil {
		return nil, err
	}
	if len(gxs) != n.NumInputs() {
		return nil, fmt.Errorf("the rule gives %d gradients for %d inputs", len(gxs), n.NumInputs())
	}
	for i, gx := range gxs {
		in := n.Input(i)
		if in == nil || !c.want[in] {
			continue
		}
		if gx == nil {
			// A wanted input left without a gradient would train as
			// if it did not matter: refuse rather than guess.
			return nil, fmt.Errorf("the rule gives no gradient for input %d (%q), which the loss depends on", i, in.Name)
		}
		if r.bcast != nil && r.bcast(c, n, i) {
			gx = c.unbroadcast(gx, in)
			if c.Inf.DType(n.Output(0)) != c.Inf.DType(in) {
				gx = c.CastTo(gx, in)
			}
			gxs[i] = gx
		}
	}
	if err := c.Err(); err != nil {
		return nil, err
	}
	for i, gx := range gxs {
		if in := n.Input(i); in != nil && c.want[in] {
			c.Inf.Set(gx, c.Inf.Info(in))
		}
	}
	return gxs, nil
}

// ruleKey is a node's key in the rule table: the op for the default
// domain, "domain::op" for others (e.g. "com.microsoft::MatMulNBits").
func ruleKey(n *graph.Node) string {
	if n.Domain == "" || n.Domain == "ai.onnx" {
		return n.Op
	}
	return n.Domain + "::" + n.Op
}

func isDiscrete(dt graph.DataType) bool {
	return dt != graph.Undefined && !dt.IsFloat()
}

// nodeName names the backward values of a node's rule.
func nodeName(n *graph.Node) string {
	if n.Name != "" {
		return n.Name
	}
	return n.Op
}

// iota64 is [from, from+1, ..., to-1].
func iota64(from, to int64) []int64 {
	var out []int64
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// findSiLUs finds y = x·σ(x) (SiLU, as exporters write Llama's MLP
// activation: Sigmoid then Mul) where σ(x) feeds only that Mul, and takes
// σ(x) out of want: gradMul then gives x the whole derivative
// σ + y·(1 − σ) (= σ·(1 + x·(1 − σ))) in four kernels, where Mul's and
// Sigmoid's rules and the sum of x's two gradients take seven. The form
// reads σ and y, which the backward keeps anyway (y for the product y·up
// of a gated MLP), and not x: x dies in the forward, one [B, T, I] tensor
// a layer fewer kept (1 − σ is exact where σ is near 1, so no
// cancellation in 16-bit types).
func findSiLUs(g *graph.Graph, want map[*graph.Value]bool) map[*graph.Node]int {
	out := map[*graph.Node]int{}
	for _, n := range g.Nodes {
		if n.Op != "Mul" || n.Domain != "" || n.NumInputs() != 2 {
			continue
		}
		for xi := range 2 {
			x, s := n.Input(xi), n.Input(1-xi)
			sg, _ := s.Producer()
			if sg != nil && sg.Op == "Sigmoid" && sg.Domain == "" && sg.Input(0) == x && s.NumUses() == 1 && !s.IsGraphOutput() && want[x] {
				out[n] = xi
				delete(want, s)
				break
			}
		}
	}
	return out
}
