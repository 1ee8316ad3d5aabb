// Package fold specialises a graph to concrete input dims and folds what
// then becomes constant. An exported transformer computes its shapes at
// run time (Shape → Gather → Concat → Reshape, Range for positions and
// masks, and the gradient's un-broadcasting); once batch and sequence
// length are fixed, all of that is known when the graph is compiled. Left
// in, it is a stream of tiny int64 nodes that ONNX Runtime places on the
// CPU between GPU kernels, each forcing a sync; folded, the step is only
// the arithmetic that depends on the data.
package fold

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

var le = binary.LittleEndian

// Stats says what Specialize did.
type Stats struct {
	Folded  int // nodes replaced by constants
	Removed int // nodes nothing needed any more
}

// Concretize gives every symbolic dim named in dims (and every dim
// expression of them, such as "seq*batch") its size, in the graph's
// inputs, outputs, value infos and node outputs. Shape inference then sees
// concrete shapes everywhere, so passes that run after it (the gradient
// rules) can pick their static forms.
func Concretize(g *graph.Graph, dims map[string]int64) error {
	for name, d := range dims {
		if d <= 0 {
			return fmt.Errorf("dim %q: size %d must be positive", name, d)
		}
	}
	concrete := func(t *graph.TensorType) {
		if t == nil {
			return
		}
		for i, d := range t.Shape {
			if d.Param == "" {
				continue
			}
			size, ok := dims[d.Param]
			if !ok {
				size, ok = dimExpr(d.Param, dims)
			}
			if ok && size >= 0 {
				t.Shape[i] = graph.Dim{Value: size, Denotation: d.Denotation}
			}
		}
	}
	for _, vs := range [][]*graph.Value{g.Inputs, g.Outputs, g.ValueInfo} {
		for _, v := range vs {
			concrete(v.Type)
		}
	}
	g.Walk(func(n *graph.Node) {
		for _, o := range n.Outputs() {
			if o != nil {
				concrete(o.Type)
			}
		}
	})
	return nil
}

// Specialize concretizes dims (Concretize), then replaces each node whose
// outputs are now computable at compile time (every input constant, or a
// Shape of a value whose dims are all known) by constants, and removes the
// nodes nothing reads. Graph inputs stay, even if only their shape was
// read, so the feeds do not change. A dim left symbolic stays dynamic.
func Specialize(g *graph.Graph, dims map[string]int64) (Stats, error) {
	var st Stats
	if err := Concretize(g, dims); err != nil {
		return st, err
	}
	if err := g.SortTopo(); err != nil {
		return st, err
	}
	table := evalTable()
	// One pass in topological order folds chains: a folded node's outputs
	// are constants for the nodes after it. Inference is recomputed per
	// round, since folding makes more dims known.
	for round := 0; ; round++ {
		inf := infer.New()
		folded := 0
		for _, n := range append([]*graph.Node(nil), g.Nodes...) {
			ok, err := foldNode(g, n, table, inf)
			if err != nil {
				return st, fmt.Errorf("fold: node %q (%s): %w", n.Name, n.Op, err)
			}
			if ok {
				folded++
			}
		}
		st.Folded += folded
		if folded == 0 || round > 100 {
			break
		}
	}
	removed, err := removeDead(g)
	st.Removed = removed
	return st, err
}

// foldNode replaces n by constants when it can; false when it leaves it.
func foldNode(g *graph.Graph, n *graph.Node, table map[string]evalFunc, inf *infer.Inferer) (bool, error) {
	if n.Domain != "" || len(n.Subgraphs()) > 0 || n.Graph() != g {
		return false, nil
	}
	used := false
	for _, o := range n.Outputs() {
		if o != nil && o.IsGraphOutput() {
			return false, nil // the output keeps its name and producer
		}
		used = used || (o != nil && o.NumUses() > 0)
	}
	if !used {
		return false, nil // folded already, or dead
	}
	var outs []*tensor
	if n.Op == "Shape" {
		x := inf.Info(n.Input(0))
		if x.Rank == 0 {
			x.Dims = []graph.Dim{} // a scalar's shape is known without dims
		}
		if x.Dims == nil {
			return false, nil
		}
		shape := make([]int64, len(x.Dims))
		for i, d := range x.Dims {
			if !d.Known() {
				return false, nil
			}
			shape[i] = d.Value
		}
		lo, hi := clampSlice(n.AttrInt("start", 0), int64(len(shape)), 1), int64(len(shape))
		if a := n.Attr("end"); a != nil {
			hi = clampSlice(a.I, int64(len(shape)), 1)
		}
		vec := shape[lo:max(lo, hi)]
		outs = []*tensor{{dt: graph.Int64, dims: []int64{int64(len(vec))}, i: append([]int64{}, vec...)}}
	} else {
		eval, known := table[n.Op]
		if !known {
			return false, nil
		}
		ins := make([]*tensor, n.NumInputs())
		for i, v := range n.Inputs() {
			if v == nil {
				continue
			}
			t := graph.ConstTensor(v)
			if t == nil {
				return false, nil
			}
			c, err := fromGraph(t)
			if errors.Is(err, errNoFold) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			ins[i] = c
		}
		if len(ins) == 0 || ins[0] == nil {
			return false, nil
		}
		var err error
		outs, err = eval(n, ins)
		if errors.Is(err, errNoFold) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	if len(outs) != len(n.Outputs()) {
		return false, nil
	}
	for i, o := range n.Outputs() {
		if o == nil {
			continue
		}
		t, err := outs[i].toGraph(o.Name + ".folded")
		if errors.Is(err, errNoFold) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		o.ReplaceAllUsesWith(g.Root().AddInitializer(t))
	}
	return true, nil
}

// removeDead removes nodes whose outputs nothing reads and the
// initializers left unread, keeping the graph inputs.
func removeDead(g *graph.Graph) (int, error) {
	removed := 0
	for i := len(g.Nodes) - 1; i >= 0; i-- {
		n := g.Nodes[i]
		live := false
		for _, o := range n.Outputs() {
			live = live || (o != nil && (o.NumUses() > 0 || o.IsGraphOutput()))
		}
		if live {
			continue
		}
		if err := g.RemoveNode(n); err != nil {
			return removed, err
		}
		removed++
	}
	for _, v := range append([]*graph.Value(nil), g.Initializers...) {
		if v.NumUses() == 0 && !v.IsGraphOutput() && !v.IsGraphInput() {
			if err := g.RemoveInitializer(v); err != nil {
				return removed, err
			}
		}
	}
	return removed, nil
}

// dimExpr evaluates a symbolic dim that is an expression of named dims,
// as torch.onnx writes them ("seq*batch", "2*s0", "s1 + 1", "s0//2"):
// integers and names joined by + - * // and parentheses. ok is false when
// it is not such an expression or names a dim not given.
func dimExpr(s string, dims map[string]int64) (v int64, ok bool) {
	p := &exprParser{s: strings.ReplaceAll(s, " ", ""), dims: dims}
	v, ok = p.sum()
	return v, ok && p.pos == len(p.s)
}

type exprParser struct {
	s    string
	pos  int
	dims map[string]int64
}

func (p *exprParser) sum() (int64, bool) {
	v, ok := p.product()
	for ok && p.pos < len(p.s) && (p.s[p.pos] == '+' || p.s[p.pos] == '-') {
		op := p.s[p.pos]
		p.pos++
		var w int64
		if w, ok = p.product(); op == '+' {
			v += w
		} else {
			v -= w
		}
	}
	return v, ok
}

func (p *exprParser) product() (int64, bool) {
	v, ok := p.atom()
	for ok && p.pos < len(p.s) {
		switch {
		case strings.HasPrefix(p.s[p.pos:], "//"):
			p.pos += 2
			var w int64
			if w, ok = p.atom(); ok && w != 0 {
				v = floorDiv(v, w)
			} else {
				ok = false
			}
		case p.s[p.pos] == '*':
			p.pos++
			var w int64
			w, ok = p.atom()
			v *= w
		default:
			return v, ok
		}
	}
	return v, ok
}

func (p *exprParser) atom() (int64, bool) {
	if p.pos >= len(p.s) {
		return 0, false
	}
	if p.s[p.pos] == '(' {
		p.pos++
		v, ok := p.sum()
		if !ok || p.pos >= len(p.s) || p.s[p.pos] != ')' {
			return 0, false
		}
		p.pos++
		return v, true
	}
	start := p.pos
	for p.pos < len(p.s) && (p.s[p.pos] == '_' || p.s[p.pos] == '.' || unicode.IsLetter(rune(p.s[p.pos])) || unicode.IsDigit(rune(p.s[p.pos]))) {
		p.pos++
	}
	tok := p.s[start:p.pos]
	if n, err := strconv.ParseInt(tok, 10, 64); err == nil {
		return n, true
	}
	v, ok := p.dims[tok]
	return v, ok
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
