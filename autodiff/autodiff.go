package autodiff

// Reverse-mode automatic differentiation on the IR.
//
// The driver does the work every rule would otherwise repeat: it walks
// only the nodes that lie between the parameters and the loss, in reverse
// topological order; it asks a rule only for the input gradients that are
// needed (an input that does not depend on a parameter gets none, so frozen
// weights cost nothing); it sums the gradients of values read more than
// once; and it offers rules the shared helpers (un-broadcasting, opset-aware
// Reduce/Squeeze/Unsqueeze, typed constants). A nil gradient is a symbolic
// zero: rules receive nil for outputs nothing differentiates and return nil
// for inputs that get nothing, and no zero tensors are built.

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// gradRule returns the gradients of n's inputs, one per input slot (nil
// for none), given the gradients of its outputs (nil for none; at least
// one is set). Rules consult c.needs(i) to skip inputs nobody wants.
type gradRule func(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error)

// gradCtx is what a rule builds with: the op builder (opset forms, typed
// constants, sticky errors) plus which inputs want a gradient.
type gradCtx struct {
	*opb.Builder
	want map[*graph.Value]bool // values whose gradient is needed
	node *graph.Node
}

// needs reports whether input i of the current node wants a gradient.
func (c *gradCtx) needs(i int) bool {
	return c.want[c.node.Input(i)]
}

// rank is like's static rank, or an error naming it.
func (c *gradCtx) rank(v *graph.Value) (int, error) {
	r := c.Inf.Rank(v)
	if r < 0 {
		return 0, fmt.Errorf("the rank of %q is not known statically", v.Name)
	}
	return r, nil
}

// sameShape reports whether a and b are statically known to have the same
// shape (equal sizes or identical symbols in every dim).
func (c *gradCtx) sameShape(a, b *graph.Value) bool {
	x, y := c.Inf.Info(a), c.Inf.Info(b)
	if x.Dims == nil || y.Dims == nil || len(x.Dims) != len(y.Dims) {
		return false
	}
	for i := range x.Dims {
		dx, dy := x.Dims[i], y.Dims[i]
		switch {
		case dx.Param != "" && dx.Param == dy.Param:
		case dx.Known() && dy.Known() && dx.Value == dy.Value:
		default:
			return false
		}
	}
	return true
}

// unbroadcast sums g (shaped like the broadcast result) down to the shape
// of x, the way numpy broadcasting expanded x. When shapes are known it
// reduces over the right axes statically; otherwise it finds them at run
// time with standard ops: pad x's shape with leading ones, take the axes
// where it is 1, ReduceSum there, Reshape to x's shape.
func (c *gradCtx) unbroadcast(g, x *graph.Value) *graph.Value {
	if c.sameShape(g, x) {
		return g
	}
	xi, gi := c.Inf.Info(x), c.Inf.Info(g)
	if xi.Rank == 0 && gi.Rank >= 0 {
		return c.ReshapeLike(c.ReduceSum(g, nil, false), x)
	}
	if xi.Dims != nil && gi.Rank >= len(xi.Dims) {
		var axes []int64
		lead := gi.Rank - len(xi.Dims)
		static := true
		for i := 0; i < gi.Rank; i++ {
			if i < lead {
				axes = append(axes, int64(i))
				continue
			}
			dx := xi.Dims[i-lead]
			var dg graph.Dim
			if gi.Dims != nil {
				dg = gi.Dims[i]
			} else {
				dg = graph.Dim{Value: -1}
			}
			switch {
			case dx.Known() && dx.Value == 1:
				if !(dg.Known() && dg.Value == 1) {
					axes = append(axes, int64(i))
				}
			case dx.Known(), dx.Param != "" && dx.Param == dg.Param:
				// same size
			default:
				static = false
			}
		}
		if static {
			if len(axes) == 0 {
				return g
			}
			return c.ReshapeLike(c.ReduceSum(g, axes, true), x)
		}
	}
	if c.Opset < 13 {
		return c.unbroadcastPerAxis(g, x, xi.Rank, gi.Rank)
	}
	gs, xs := c.Shape(g), c.Shape(x)
	rg := c.Op("Shape", []*graph.Value{gs})
	rx := c.Op("Shape", []*graph.Value{xs})
	pad := c.Op("Sub", []*graph.Value{rg, rx})
	ones := c.Op("ConstantOfShape", []*graph.Value{pad}, graph.AttrT("value", graph.NewTensor("", graph.Int64, []int64{1}, []byte{1, 0, 0, 0, 0, 0, 0, 0})))
	padded := c.Op("Concat", []*graph.Value{ones, xs}, graph.AttrI("axis", 0))
	isOne := c.Op("Equal", []*graph.Value{padded, c.Ints(1)})
	notOne := c.Op("Not", []*graph.Value{c.Op("Equal", []*graph.Value{gs, c.Ints(1)})})
	mask := c.Op("And", []*graph.Value{isOne, notOne})
	axes := c.Op("Reshape", []*graph.Value{c.Op("NonZero", []*graph.Value{mask}), c.Ints(-1)})
	return c.ReshapeLike(c.ReduceSumDyn(g, axes), x)
}

// unbroadcastPerAxis is unbroadcast for opsets without run-time reduction
// axes (before 13), given both ranks: leading axes are summed statically;
// for each other axis a run-time Where picks the axis sum when x's dim is 1
// and g's is not, and a Slice to x's dim keeps one copy of it.
func (c *gradCtx) unbroadcastPerAxis(g, x *graph.Value, rx, rg int) *graph.Value {
	if rx < 0 || rg < 0 || rx > rg || c.Opset < 10 {
		c.Fail(fmt.Errorf("cannot tell statically how %q broadcast against %q at opset %d (declare the shapes or use opset ≥ 13)", x.Name, g.Name, c.Opset))
		return g
	}
	if lead := rg - rx; lead > 0 {
		axes := make([]int64, lead)
		for i := range axes {
			axes[i] = int64(i)
		}
		g = c.ReduceSum(g, axes, false)
	}
	xs := c.Shape(x)
	for i := 0; i < rx; i++ {
		gs := c.Op("Shape", vals(g))
		dim := func(s *graph.Value) *graph.Value {
			return c.Op("Slice", vals(s, c.Ints(int64(i)), c.Ints(int64(i+1)), c.Ints(0)))
		}
		xd := dim(xs)
		cond := c.Op("And", vals(
			c.Op("Equal", vals(xd, c.Ints(1))),
			c.Op("Not", vals(c.Op("Equal", vals(dim(gs), c.Ints(1)))))))
		summed := c.ReduceSum(g, []int64{int64(i)}, true)
		picked := c.Op("Where", vals(c.Op("Reshape", vals(cond, c.Ints())), summed, g))
		g = c.Op("Slice", vals(picked, c.Ints(0), xd, c.Ints(int64(i))))
	}
	return c.ReshapeLike(g, x)
}

// ErrMissingRules lists every op between the parameters and the loss that
// has no gradient rule.
var ErrMissingRules = errors.New("no gradient rule")

// Gradients appends to the main graph the computation of d loss / d p for
// every parameter p (graph inputs or initializers of the main graph), and
// returns them in order. A parameter the loss does not depend on gets a
// nil gradient.
func Gradients(m *graph.Model, loss *graph.Value, params []*graph.Value) ([]*graph.Value, error) {
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
		if rule, known := rules[ruleKey(n)]; known && rule == nil {
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

	c := &gradCtx{Builder: opb.New(m, "grad", "grad/loss", inf), want: want}
	grads := map[*graph.Value][]*graph.Value{}
	one, err := c.Scalar(1, loss)
	if err != nil {
		return nil, err
	}
	if r := inf.Rank(loss); r != 0 {
		one = c.Op("Expand", []*graph.Value{one, c.Shape(loss)})
	}
	grads[loss] = []*graph.Value{one}
	sum := func(v *graph.Value) *graph.Value {
		gs := grads[v]
		switch len(gs) {
		case 0:
			return nil
		case 1:
			return gs[0]
		}
		s := c.Named("Sum", v.Name+".grad", gs)
		grads[v] = []*graph.Value{s}
		return s
	}
	for _, n := range active { // active is in reverse topological order
		gys := make([]*graph.Value, len(n.Outputs()))
		any := false
		for i, o := range n.Outputs() {
			if o != nil && want[o] {
				gys[i] = sum(o)
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
		gxs, err := rules[ruleKey(n)](c, n, gys)
		if err == nil {
			err = c.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("autodiff: node %q (%s): %w", n.Name, n.Op, err)
		}
		for i := range n.NumInputs() {
			in := n.Input(i)
			if in == nil || !want[in] {
				continue
			}
			var gx *graph.Value
			if i < len(gxs) {
				gx = gxs[i]
			}
			if gx == nil {
				// A wanted input left without a gradient would train as
				// if it did not matter: refuse rather than guess.
				return nil, fmt.Errorf("autodiff: node %q (%s): the rule gives no gradient for input %d (%q), which the loss depends on", n.Name, n.Op, i, in.Name)
			}
			// A gradient has its value's type: later rules use it.
			inf.Set(gx, inf.Info(in))
			grads[in] = append(grads[in], gx)
		}
	}
	// Each parameter gets its own value named "<param>.grad": a rule may
	// hand the same value to several inputs (Add of equal shapes), and
	// callers output gradients by name.
	out := make([]*graph.Value, len(params))
	for i, p := range params {
		if g := sum(p); g != nil {
			out[i] = c.Named("Identity", p.Name+".grad", vals(g))
			inf.Set(out[i], inf.Info(p))
		}
	}
	return out, nil
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
