package graph

import (
	"fmt"
	"strconv"
)

// NewModel makes an empty model with the given default-domain opset.
func NewModel(opset int64) *Model {
	m := &Model{IRVersion: 10, Opsets: []Opset{{Domain: "", Version: opset}}, ProducerName: "loracc"}
	m.Graph = &Graph{Name: "main", Model: m, values: map[string]*Value{}, names: newNameSet()}
	return m
}

// UniqueName returns base, or base with the next numeric suffix ("_1",
// "_2", ...) that no value of the model uses yet, and reserves it (a
// suffix freed by a removal is not handed out again for that base).
// Reserving makes naming deterministic: the same edits on the same model
// give the same names.
func (g *Graph) UniqueName(base string) string {
	if base == "" {
		base = "v"
	}
	return fresh(g.names.used, g.names.next, base)
}

// newValue defines a fresh value in g under a unique name.
func (g *Graph) newValue(base string) *Value {
	v := &Value{Name: g.UniqueName(base), graph: g}
	g.values[v.Name] = v
	return v
}

// AddInput appends a graph input of the given type.
func (g *Graph) AddInput(name string, t *TensorType) *Value {
	v := g.newValue(name)
	v.Type = t
	g.Inputs = append(g.Inputs, v)
	return v
}

// AddInitializer defines a constant value holding t; the value's name is
// t.Name made unique (and t.Name follows it).
func (g *Graph) AddInitializer(t *Tensor) *Value {
	v := g.newValue(t.Name)
	t.Name = v.Name
	v.Const = t
	g.Initializers = append(g.Initializers, v)
	return v
}

// AddOutput marks v as an output of g.
func (g *Graph) AddOutput(v *Value) { g.Outputs = append(g.Outputs, v) }

// NewNode appends a node computing op(inputs) with numOut outputs named
// after outBase ("" picks the node name). Inputs must be visible from g.
func (g *Graph) NewNode(op, name string, inputs []*Value, numOut int, outBase string) *Node {
	if name != "" {
		name = fresh(g.names.nodes, g.names.nextNode, name)
	}
	n := &Node{Name: name, Op: op, graph: g}
	for i, v := range inputs {
		n.inputs = append(n.inputs, v)
		if v != nil {
			v.uses = append(v.uses, Use{Node: n, Index: i})
		}
	}
	if outBase == "" {
		outBase = name
	}
	for i := 0; i < numOut; i++ {
		base := outBase
		if numOut > 1 {
			base = outBase + "_" + strconv.Itoa(i)
		}
		v := g.newValue(base)
		v.producer, v.outIndex = n, i
		n.outputs = append(n.outputs, v)
	}
	g.Nodes = append(g.Nodes, n)
	return n
}

// SetInput makes input i of n read v (nil omits it), keeping use lists true.
func (n *Node) SetInput(i int, v *Value) {
	for len(n.inputs) <= i {
		n.inputs = append(n.inputs, nil)
	}
	if old := n.inputs[i]; old != nil {
		old.removeUse(n, i)
	}
	n.inputs[i] = v
	if v != nil {
		v.uses = append(v.uses, Use{Node: n, Index: i})
	}
}

func (v *Value) removeUse(n *Node, i int) {
	for k, u := range v.uses {
		if u.Node == n && u.Index == i {
			v.uses = append(v.uses[:k], v.uses[k+1:]...)
			return
		}
	}
}

// ReplaceAllUsesWith redirects every reader of v, and v's place among its
// graph's outputs, to w.
func (v *Value) ReplaceAllUsesWith(w *Value) {
	for _, u := range v.Uses() {
		u.Node.SetInput(u.Index, w)
	}
	for i, o := range v.graph.Outputs {
		if o == v {
			v.graph.Outputs[i] = w
		}
	}
}

// AddOutput appends an output slot to n holding a fresh value named after
// base (made unique), for ops whose trailing outputs are optional (such as
// LayerNormalization's mean and inverse standard deviation).
func (n *Node) AddOutput(base string) *Value {
	v := n.graph.newValue(base)
	v.producer, v.outIndex = n, len(n.outputs)
	n.outputs = append(n.outputs, v)
	return v
}

// SetAttr sets or replaces an attribute.
func (n *Node) SetAttr(a *Attr) {
	for i, old := range n.Attrs {
		if old.Name == a.Name {
			n.Attrs[i] = a
			return
		}
	}
	n.Attrs = append(n.Attrs, a)
}

// RemoveNode deletes n from its graph. Its outputs must be unused and not
// graph outputs; its inputs lose the corresponding uses.
func (g *Graph) RemoveNode(n *Node) error {
	if n.graph != g {
		return fmt.Errorf("node %q (%s) is not in graph %q", n.Name, n.Op, g.Name)
	}
	for _, o := range n.outputs {
		if o == nil {
			continue
		}
		if len(o.uses) > 0 || o.IsGraphOutput() {
			return fmt.Errorf("node %q (%s): output %q is still used", n.Name, n.Op, o.Name)
		}
	}
	for i, in := range n.inputs {
		if in != nil {
			in.removeUse(n, i)
		}
	}
	for _, o := range n.outputs {
		if o != nil {
			delete(g.values, o.Name)
			delete(g.names.used, o.Name)
			o.producer = nil
		}
	}
	for i, m := range g.Nodes {
		if m == n {
			g.Nodes = append(g.Nodes[:i], g.Nodes[i+1:]...)
			break
		}
	}
	n.graph = nil
	return nil
}

// RemoveInitializer deletes an unused initializer.
func (g *Graph) RemoveInitializer(v *Value) error {
	if len(v.uses) > 0 || v.IsGraphOutput() {
		return fmt.Errorf("initializer %q is still used", v.Name)
	}
	for i, w := range g.Initializers {
		if w == v {
			g.Initializers = append(g.Initializers[:i], g.Initializers[i+1:]...)
			delete(g.values, v.Name)
			delete(g.names.used, v.Name)
			return nil
		}
	}
	return fmt.Errorf("initializer %q not found in graph %q", v.Name, g.Name)
}

// RemoveInput deletes an unused graph input.
func (g *Graph) RemoveInput(v *Value) error {
	if len(v.uses) > 0 || v.IsGraphOutput() {
		return fmt.Errorf("input %q is still used", v.Name)
	}
	for i, w := range g.Inputs {
		if w == v {
			g.Inputs = append(g.Inputs[:i], g.Inputs[i+1:]...)
			if v.Const == nil {
				delete(g.values, v.Name)
				delete(g.names.used, v.Name)
			}
			return nil
		}
	}
	return fmt.Errorf("input %q not found in graph %q", v.Name, g.Name)
}

// Walk calls fn for every node of g and of its subgraphs, depth first, in
// node-list order.
func (g *Graph) Walk(fn func(*Node)) {
	for _, n := range g.Nodes {
		fn(n)
		for _, sg := range n.Subgraphs() {
			sg.Walk(fn)
		}
	}
}

// NewSubgraph attaches a new, empty graph to n as the GRAPH attribute attr
// (If's then_branch, Loop's body, ...). Its nodes see the values of n's
// graph and of every enclosing graph.
func (n *Node) NewSubgraph(attr, name string) *Graph {
	sg := &Graph{Name: name, Parent: n.graph, Owner: n, Model: n.graph.Model, values: map[string]*Value{}, names: n.graph.names}
	n.SetAttr(&Attr{Name: attr, Type: AttrGraph, G: sg})
	return sg
}

// Rename gives v a new name, which no visible value may have (take one
// from UniqueName); the old name becomes free for reuse.
func (v *Value) Rename(name string) error {
	g := v.graph
	if name == v.Name {
		return nil
	}
	if g.Lookup(name) != nil {
		return fmt.Errorf("cannot rename %q to %q: the name is taken", v.Name, name)
	}
	delete(g.values, v.Name)
	delete(g.names.used, v.Name)
	v.Name = name
	g.names.used[name] = true
	g.values[name] = v
	if v.Const != nil {
		v.Const.Name = name
	}
	return nil
}

// PlaceAfter moves nodes (already in g) to sit right after anchor, in the
// given order. Rewrites use it to put new nodes next to the node they
// extend, so the rest of the list keeps its order and undoing the rewrite
// restores the original list exactly.
func (g *Graph) PlaceAfter(anchor *Node, nodes ...*Node) {
	g.PlaceAfterEach(map[*Node][]*Node{anchor: nodes})
}

// PlaceAfterEach is PlaceAfter for many anchors in one pass over the list,
// so a rewrite of every target of a model costs O(nodes), not
// O(nodes·targets). The groups must be disjoint and hold no anchor; the
// result equals placing them one by one.
func (g *Graph) PlaceAfterEach(groups map[*Node][]*Node) {
	move := map[*Node]bool{}
	for _, nodes := range groups {
		for _, n := range nodes {
			move[n] = true
		}
	}
	out := make([]*Node, 0, len(g.Nodes))
	for _, n := range g.Nodes {
		if move[n] {
			continue
		}
		out = append(out, n)
		out = append(out, groups[n]...)
	}
	g.Nodes = out
}

// PromoteToInput turns an initializer into a graph input of the same name,
// dropping its data: the value is then fed at run time (training graphs
// take the adapter this way). Readers are unchanged.
func (g *Graph) PromoteToInput(v *Value) error { return g.PromoteToInputs(v) }

// PromoteToInputs is PromoteToInput for many values in one pass over the
// initializers and inputs (a model with thousands of adapter tensors
// would otherwise pay O(n²)); inputs are appended in the order given.
func (g *Graph) PromoteToInputs(vs ...*Value) error {
	// found[v] is false until v is seen among the initializers; every v
	// is checked before the list is touched, so an error changes nothing.
	found := make(map[*Value]bool, len(vs))
	for _, v := range vs {
		found[v] = false
	}
	for _, w := range g.Initializers {
		if _, ok := found[w]; ok {
			found[w] = true
		}
	}
	for _, v := range vs {
		if !found[v] {
			return fmt.Errorf("initializer %q not found in graph %q", v.Name, g.Name)
		}
	}
	kept := g.Initializers[:0]
	for _, w := range g.Initializers {
		if _, ok := found[w]; !ok {
			kept = append(kept, w)
		}
	}
	clear(g.Initializers[len(kept):])
	g.Initializers = kept
	isInput := make(map[*Value]bool, len(g.Inputs))
	for _, in := range g.Inputs {
		isInput[in] = true
	}
	for _, v := range vs {
		v.Const = nil
		if !isInput[v] { // an optional input is an input already
			g.Inputs = append(g.Inputs, v)
			isInput[v] = true
		}
	}
	return nil
}

// Prune removes from g every node none of whose outputs is read or is a
// graph output, then every initializer and input nothing reads; it
// returns how many nodes went. Subgraph reads of outer values count as
// reads, so If/Loop captures keep what they use.
func (g *Graph) Prune() (int, error) {
	if err := g.SortTopo(); err != nil {
		return 0, err
	}
	removed := 0
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		n := g.Nodes[i]
		live := false
		for _, o := range n.outputs {
			if o != nil && (len(o.uses) > 0 || o.IsGraphOutput()) {
				live = true
				break
			}
		}
		if live {
			continue
		}
		if err := g.RemoveNode(n); err != nil {
			return removed, err
		}
		removed++
	}
	for _, v := range append([]*Value(nil), g.Initializers...) {
		if len(v.uses) == 0 && !v.IsGraphOutput() {
			if v.IsGraphInput() {
				if err := g.RemoveInput(v); err != nil {
					return removed, err
				}
			}
			if err := g.RemoveInitializer(v); err != nil {
				return removed, err
			}
		}
	}
	for _, v := range append([]*Value(nil), g.Inputs...) {
		if len(v.uses) == 0 && !v.IsGraphOutput() {
			if err := g.RemoveInput(v); err != nil {
				return removed, err
			}
		}
	}
	kept := g.ValueInfo[:0]
	for _, v := range g.ValueInfo {
		if g.Lookup(v.Name) == v {
			kept = append(kept, v)
		}
	}
	g.ValueInfo = kept
	return removed, nil
}

// CloneNode adds to g a copy of n reading inputs, with outputs named after
// n's plus suffix (made unique). Attributes are shared (tensors are
// read-only); nodes holding subgraphs cannot be cloned.
func (g *Graph) CloneNode(n *Node, inputs []*Value, suffix string) (*Node, error) {
	if len(n.Subgraphs()) > 0 {
		return nil, fmt.Errorf("node %q (%s) holds subgraphs and cannot be cloned", n.Name, n.Op)
	}
	name := n.Name
	if name != "" {
		name += suffix
	}
	c := g.NewNode(n.Op, name, inputs, 0, "")
	c.Domain, c.Overload, c.DocString = n.Domain, n.Overload, n.DocString
	c.Metadata = append([]KV(nil), n.Metadata...)
	c.Attrs = append([]*Attr(nil), n.Attrs...)
	c.rest = n.rest
	for i, o := range n.outputs {
		if o == nil {
			c.outputs = append(c.outputs, nil)
			continue
		}
		v := g.newValue(o.Name + suffix)
		v.producer, v.outIndex = c, i
		if o.Type != nil {
			tt := *o.Type
			v.Type = &tt
		}
		c.outputs = append(c.outputs, v)
	}
	return c, nil
}
