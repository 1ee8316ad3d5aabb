// Package memplan estimates the device memory a graph's activations need:
// it runs the graph's nodes in the order ONNX Runtime's sequential
// executor runs them (ortOrder), allocates each output when its node runs
// and frees it after its last reader, and reports the peak of live bytes
// and what is live at the peak. Weights, inputs and graph outputs are
// counted apart, since they live for the whole run.
//
// Why a plan of our own: ORT reports its arena's peak only after running
// (runtime's MemoryStats), on the device; the compiler needs the number
// before that, per (batch, length), to decide what to keep for the
// backward and what to recompute, and a test can hold it below a bound
// on any machine.
package memplan

import (
	"fmt"
	"sort"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// aliasOp reports whether op keeps its output in its first input's
// storage.
func aliasOp(op string) bool {
	switch op {
	case "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity":
		return true
	}
	return false
}

// Holder is one buffer live at the peak, named after the value that
// allocated it.
type Holder struct {
	Name  string
	Op    string // the op that computes it
	Bytes int64
	Dims  []int64
}

// Report is the plan of one graph.
type Report struct {
	// Peak is the largest sum of live activation bytes; PeakAt the node
	// running then.
	Peak   int64
	PeakAt string
	// Holders are the values live at the peak, largest first.
	Holders []Holder
	// Weights are the initializers' bytes, Inputs and Outputs the graph
	// inputs' and outputs' (with static shapes).
	Weights, Inputs, Outputs int64
	// Unknown counts activations whose size is not known statically (left
	// out of Peak): a graph not specialised to fixed dims has many.
	Unknown int
}

// Plan simulates g's nodes in order; the graph should be specialised
// (export-train --static) so every size is known.
func Plan(g *graph.Graph) (Report, error) {
	var r Report
	inf := infer.New()
	size := func(v *graph.Value) (int64, []int64, bool) {
		in := inf.Info(v)
		if in.Rank < 0 || len(in.Dims) != in.Rank || in.DType == graph.Undefined {
			return 0, nil, false
		}
		dims := make([]int64, len(in.Dims))
		for i, d := range in.Dims {
			if !d.Known() {
				return 0, nil, false
			}
			dims[i] = d.Value
		}
		n, err := graph.ByteSize(in.DType, dims)
		if err != nil {
			return 0, nil, false
		}
		return n, dims, true
	}
	for _, v := range g.Initializers {
		if t := graph.ConstTensor(v); t != nil {
			if n, err := t.ByteSize(); err == nil {
				r.Weights += n
			}
		}
	}
	for _, v := range g.Inputs {
		if n, _, ok := size(v); ok {
			r.Inputs += n
		}
	}
	for _, v := range g.Outputs {
		if n, _, ok := size(v); ok {
			r.Outputs += n
		}
	}
	// lastUse is the index of the last node reading each value.
	order := ortOrder(g)
	lastUse := map[*graph.Value]int{}
	for i, n := range order {
		for _, in := range n.Inputs() {
			if in != nil {
				lastUse[in] = i
			}
		}
		for _, sub := range n.Subgraphs() {
			return r, fmt.Errorf("node %q (%s) holds subgraph %q: plans cover flat graphs", n.Name, n.Op, sub.Name)
		}
	}
	// A buffer holds one or more values: ops that ORT runs in place of
	// their input's storage (Reshape and its kin alias their input)
	// extend the input's buffer instead of allocating.
	type buffer struct {
		bytes int64
		dims  []int64
		op    string
		name  string
		refs  int // values of the buffer not yet past their last use
	}
	bufOf := map[*graph.Value]*buffer{}
	alive := map[*buffer]bool{}
	var cur int64
	release := func(v *graph.Value) {
		b := bufOf[v]
		if b == nil {
			return
		}
		delete(bufOf, v)
		if b.refs--; b.refs == 0 && alive[b] {
			cur -= b.bytes
			delete(alive, b)
		}
	}
	for i, n := range order {
		for k, o := range n.Outputs() {
			if o == nil || o.IsGraphOutput() {
				continue
			}
			if k == 0 && aliasOp(n.Op) && n.Domain == "" && bufOf[n.Input(0)] != nil {
				b := bufOf[n.Input(0)]
				b.refs++
				bufOf[o] = b
				continue
			}
			sz, dims, ok := size(o)
			if !ok {
				r.Unknown++
				continue
			}
			b := &buffer{bytes: sz, dims: dims, op: n.Op, name: o.Name, refs: 1}
			bufOf[o] = b
			alive[b] = true
			cur += sz
		}
		if cur > r.Peak {
			r.Peak, r.PeakAt = cur, n.Name
			r.Holders = r.Holders[:0]
			for b := range alive {
				r.Holders = append(r.Holders, Holder{Name: b.name, Op: b.op, Bytes: b.bytes, Dims: b.dims})
			}
		}
		// Free what this node read last, and outputs nothing reads.
		for _, in := range n.Inputs() {
			if in != nil && lastUse[in] == i {
				release(in)
			}
		}
		for _, o := range n.Outputs() {
			if o != nil && o.NumUses() == 0 && !o.IsGraphOutput() {
				release(o)
			}
		}
	}
	sort.Slice(r.Holders, func(i, j int) bool {
		if r.Holders[i].Bytes != r.Holders[j].Bytes {
			return r.Holders[i].Bytes > r.Holders[j].Bytes
		}
		return r.Holders[i].Name < r.Holders[j].Name
	})
	return r, nil
}

// ortOrder is the order ONNX Runtime's default sequential plan runs g's
// nodes in (its GraphViewer's topological order): a depth-first walk
// back from the nodes no other node reads, with a stack, so the last such
// node is walked first; each node's producers are pushed in increasing
// file position, so the latest-written producer is walked first, and a
// node is placed once all it reads is. The order decides what is live
// together: a recomputed copy written after a backward value it waits on
// runs next to its reader, not where the file has it. (ONNX Runtime
// plans the graph its optimizers leave, whose fusions this does not
// model; node positions are the file's.)
func ortOrder(g *graph.Graph) []*graph.Node {
	index := make(map[*graph.Node]int, len(g.Nodes))
	for i, n := range g.Nodes {
		index[n] = i
	}
	producers := func(n *graph.Node) []*graph.Node {
		seen := map[*graph.Node]bool{}
		var ps []*graph.Node
		for _, in := range n.Inputs() {
			if in == nil {
				continue
			}
			if p, _ := in.Producer(); p != nil && !seen[p] {
				if _, ok := index[p]; ok {
					seen[p] = true
					ps = append(ps, p)
				}
			}
		}
		sort.Slice(ps, func(i, j int) bool { return index[ps[i]] < index[ps[j]] })
		return ps
	}
	type entry struct {
		n     *graph.Node
		leave bool
	}
	var stack []entry
	for _, n := range g.Nodes {
		read := false
		for _, o := range n.Outputs() {
			if o != nil && o.NumUses() > 0 {
				read = true
			}
		}
		if !read {
			stack = append(stack, entry{n, false})
		}
	}
	visited := make(map[*graph.Node]bool, len(g.Nodes))
	order := make([]*graph.Node, 0, len(g.Nodes))
	for len(stack) > 0 {
		e := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if e.leave {
			order = append(order, e.n)
			continue
		}
		if visited[e.n] {
			continue
		}
		visited[e.n] = true
		stack = append(stack, entry{e.n, true})
		for _, p := range producers(e.n) {
			stack = append(stack, entry{p, false})
		}
	}
	return order
}
