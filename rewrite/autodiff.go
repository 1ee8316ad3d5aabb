package rewrite

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
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/loracc/loracc/graph"
)

// gradRule returns the gradients of n's inputs, one per input slot (nil
// for none), given the gradients of its outputs (nil for none; at least
// one is set). Rules consult c.needs(i) to skip inputs nobody wants.
type gradRule func(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error)

// gradCtx is what a rule builds with.
type gradCtx struct {
	g     *graph.Graph
	b     *graph.Builder
	opset int64
	inf   *inferer
	want  map[*graph.Value]bool // values whose gradient is needed
	node  *graph.Node
	cache map[string]*graph.Value
	// prefix names values built outside any node's rule (loss, optimizer).
	prefix string
	// err is the first failure of a helper that returns no error; the
	// driver reports it after the rule returns.
	err error
}

// fail records an error from a helper without an error result.
func (c *gradCtx) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// newGradCtx makes a builder context on m's main graph. Passes other than
// autodiff (loss, optimizer) build through it too, for its opset-aware
// helpers.
func newGradCtx(m *graph.Model, prefix string, inf *inferer) *gradCtx {
	g := m.Graph
	return &gradCtx{g: g, b: &graph.Builder{G: g, Prefix: prefix}, opset: m.OpsetVersion(""), inf: inf, want: map[*graph.Value]bool{}, cache: map[string]*graph.Value{}, prefix: prefix}
}

// needs reports whether input i of the current node wants a gradient.
func (c *gradCtx) needs(i int) bool {
	return c.want[c.node.Input(i)]
}

// op adds a node to the backward graph; its output is named after the
// forward node it differentiates.
func (c *gradCtx) op(op string, ins []*graph.Value, attrs ...*graph.Attr) *graph.Value {
	return c.b.Op(op, c.where()+"/"+op, ins, attrs...)
}

func (c *gradCtx) where() string {
	if c.node == nil && c.prefix != "" {
		return c.prefix
	}
	return "grad/" + c.nodeName()
}

func (c *gradCtx) opN(op string, n int, ins []*graph.Value, attrs ...*graph.Attr) []*graph.Value {
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s/%s_%d", c.where(), op, i)
	}
	return c.b.OpN(op, names, ins, attrs...)
}

func (c *gradCtx) nodeName() string {
	if c.node == nil {
		return "loss"
	}
	if c.node.Name != "" {
		return c.node.Name
	}
	return c.node.Op
}

// scalar is a rank-0 constant of like's element type.
func (c *gradCtx) scalar(x float64, like *graph.Value) (*graph.Value, error) {
	dt := c.inf.dtype(like)
	if dt == graph.Undefined {
		dt = graph.Float
	}
	key := fmt.Sprintf("scalar/%s/%v", dt, x)
	if v := c.cache[key]; v != nil {
		return v, nil
	}
	var t *graph.Tensor
	var err error
	if dt == graph.Double {
		raw := make([]byte, 8)
		binary.LittleEndian.PutUint64(raw, math.Float64bits(x))
		t = graph.NewTensor("grad.const", dt, nil, raw)
	} else if t, err = graph.NewFloatTensor("grad.const", dt, nil, []float32{float32(x)}); err != nil {
		return nil, fmt.Errorf("constant %v for %q: %w", x, like.Name, err)
	}
	v := c.g.Root().AddInitializer(t)
	c.inf.set(v, staticInfo{dt: dt, rank: 0, dims: []graph.Dim{}})
	c.cache[key] = v
	return v, nil
}

// ints is a 1-D int64 constant (axes, shapes, perms).
func (c *gradCtx) ints(xs ...int64) *graph.Value {
	key := fmt.Sprintf("ints/%v", xs)
	if v := c.cache[key]; v != nil {
		return v
	}
	v := (&graph.Builder{G: c.g.Root()}).Int64s("grad.ints", xs)
	c.cache[key] = v
	return v
}

// shape is Shape(v), built once per value.
func (c *gradCtx) shape(v *graph.Value) *graph.Value {
	key := "shape/" + v.Name
	if s := c.cache[key]; s != nil {
		return s
	}
	s := c.b.Op("Shape", v.Name+".shape", []*graph.Value{v})
	c.cache[key] = s
	return s
}

// reduceSum sums x over axes (nil: all axes), in the form the opset wants.
func (c *gradCtx) reduceSum(x *graph.Value, axes []int64, keepdims bool) *graph.Value {
	keep := graph.AttrI("keepdims", boolInt(keepdims))
	if axes == nil {
		return c.op("ReduceSum", []*graph.Value{x}, keep)
	}
	if c.opset >= 13 {
		return c.op("ReduceSum", []*graph.Value{x, c.ints(axes...)}, keep)
	}
	return c.op("ReduceSum", []*graph.Value{x}, keep, graph.AttrIs("axes", axes...))
}

// reduceSumDyn sums over axes given as a runtime tensor; empty axes leave x
// as it is (opset 13+).
func (c *gradCtx) reduceSumDyn(x, axes *graph.Value) *graph.Value {
	return c.op("ReduceSum", []*graph.Value{x, axes}, graph.AttrI("keepdims", 1), graph.AttrI("noop_with_empty_axes", 1))
}

// unsqueeze inserts size-1 axes.
func (c *gradCtx) unsqueeze(x *graph.Value, axes ...int64) *graph.Value {
	if c.opset >= 13 {
		return c.op("Unsqueeze", []*graph.Value{x, c.ints(axes...)})
	}
	return c.op("Unsqueeze", []*graph.Value{x}, graph.AttrIs("axes", axes...))
}

// squeeze removes size-1 axes.
func (c *gradCtx) squeeze(x *graph.Value, axes ...int64) *graph.Value {
	if c.opset >= 13 {
		return c.op("Squeeze", []*graph.Value{x, c.ints(axes...)})
	}
	return c.op("Squeeze", []*graph.Value{x}, graph.AttrIs("axes", axes...))
}

// reshapeLike gives g the shape of like.
func (c *gradCtx) reshapeLike(g, like *graph.Value) *graph.Value {
	return c.op("Reshape", []*graph.Value{g, c.shape(like)})
}

// rank is like's static rank, or an error naming it.
func (c *gradCtx) rank(v *graph.Value) (int, error) {
	r := c.inf.rank(v)
	if r < 0 {
		return 0, fmt.Errorf("the rank of %q is not known statically", v.Name)
	}
	return r, nil
}

// sameShape reports whether a and b are statically known to have the same
// shape (equal sizes or identical symbols in every dim).
func (c *gradCtx) sameShape(a, b *graph.Value) bool {
	x, y := c.inf.info(a), c.inf.info(b)
	if x.dims == nil || y.dims == nil || len(x.dims) != len(y.dims) {
		return false
	}
	for i := range x.dims {
		dx, dy := x.dims[i], y.dims[i]
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
	xi, gi := c.inf.info(x), c.inf.info(g)
	if xi.rank == 0 && gi.rank >= 0 {
		return c.reshapeLike(c.reduceSum(g, nil, false), x)
	}
	if xi.dims != nil && gi.rank >= len(xi.dims) {
		var axes []int64
		lead := gi.rank - len(xi.dims)
		static := true
		for i := 0; i < gi.rank; i++ {
			if i < lead {
				axes = append(axes, int64(i))
				continue
			}
			dx := xi.dims[i-lead]
			var dg graph.Dim
			if gi.dims != nil {
				dg = gi.dims[i]
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
			return c.reshapeLike(c.reduceSum(g, axes, true), x)
		}
	}
	if c.opset < 13 {
		return c.unbroadcastPerAxis(g, x, xi.rank, gi.rank)
	}
	gs, xs := c.shape(g), c.shape(x)
	rg := c.op("Shape", []*graph.Value{gs})
	rx := c.op("Shape", []*graph.Value{xs})
	pad := c.op("Sub", []*graph.Value{rg, rx})
	ones := c.op("ConstantOfShape", []*graph.Value{pad}, graph.AttrT("value", graph.NewTensor("", graph.Int64, []int64{1}, []byte{1, 0, 0, 0, 0, 0, 0, 0})))
	padded := c.op("Concat", []*graph.Value{ones, xs}, graph.AttrI("axis", 0))
	isOne := c.op("Equal", []*graph.Value{padded, c.ints(1)})
	notOne := c.op("Not", []*graph.Value{c.op("Equal", []*graph.Value{gs, c.ints(1)})})
	mask := c.op("And", []*graph.Value{isOne, notOne})
	axes := c.op("Reshape", []*graph.Value{c.op("NonZero", []*graph.Value{mask}), c.ints(-1)})
	return c.reshapeLike(c.reduceSumDyn(g, axes), x)
}

// unbroadcastPerAxis is unbroadcast for opsets without run-time reduction
// axes (before 13), given both ranks: leading axes are summed statically;
// for each other axis a run-time Where picks the axis sum when x's dim is 1
// and g's is not, and a Slice to x's dim keeps one copy of it.
func (c *gradCtx) unbroadcastPerAxis(g, x *graph.Value, rx, rg int) *graph.Value {
	if rx < 0 || rg < 0 || rx > rg || c.opset < 10 {
		c.fail(fmt.Errorf("cannot tell statically how %q broadcast against %q at opset %d (declare the shapes or use opset ≥ 13)", x.Name, g.Name, c.opset))
		return g
	}
	if lead := rg - rx; lead > 0 {
		axes := make([]int64, lead)
		for i := range axes {
			axes[i] = int64(i)
		}
		g = c.reduceSum(g, axes, false)
	}
	xs := c.shape(x)
	for i := 0; i < rx; i++ {
		gs := c.op("Shape", vals(g))
		dim := func(s *graph.Value) *graph.Value {
			return c.op("Slice", vals(s, c.ints(int64(i)), c.ints(int64(i+1)), c.ints(0)))
		}
		xd := dim(xs)
		cond := c.op("And", vals(
			c.op("Equal", vals(xd, c.ints(1))),
			c.op("Not", vals(c.op("Equal", vals(dim(gs), c.ints(1)))))))
		summed := c.reduceSum(g, []int64{int64(i)}, true)
		picked := c.op("Where", vals(c.op("Reshape", vals(cond, c.ints())), summed, g))
		g = c.op("Slice", vals(picked, c.ints(0), xd, c.ints(int64(i))))
	}
	return c.reshapeLike(g, x)
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
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
	inf := newInferer()
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
			if o != nil && !isDiscrete(inf.dtype(o)) {
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

	c := newGradCtx(m, "", inf)
	c.b.Prefix = "grad"
	c.want = want
	grads := map[*graph.Value][]*graph.Value{}
	one, err := c.scalar(1, loss)
	if err != nil {
		return nil, err
	}
	if r := inf.rank(loss); r != 0 {
		one = c.op("Expand", []*graph.Value{one, c.shape(loss)})
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
		s := c.b.Op("Sum", v.Name+".grad", gs)
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
		gxs, err := rules[ruleKey(n)](c, n, gys)
		if err == nil {
			err = c.err
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
			inf.set(gx, inf.info(in))
			grads[in] = append(grads[in], gx)
		}
	}
	// Each parameter gets its own value named "<param>.grad": a rule may
	// hand the same value to several inputs (Add of equal shapes), and
	// callers output gradients by name.
	out := make([]*graph.Value, len(params))
	for i, p := range params {
		if g := sum(p); g != nil {
			out[i] = c.b.Op("Identity", p.Name+".grad", vals(g))
			inf.set(out[i], inf.info(p))
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
