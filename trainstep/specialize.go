package trainstep

// Pass "specialize".
//
// Pre:  a pruned step graph (prune, and unroll if it ran); Options.Static
//       names sizes for symbolic input dims, which pass "params" already
//       made concrete, so the loss and the gradient rules were built for
//       static shapes.
// Post: those dims are concrete everywhere, every value computable at
//       compile time is a constant (shape arithmetic, index ranges, masks,
//       the gradient's un-broadcasting axes), and the nodes that computed
//       them are gone; inputs and outputs keep their names and roles, with
//       the concrete shapes recorded in train.json.
//
// Why: a step of fixed shapes needs no shape work at run time. The int64
// nodes that do it are tiny, and ONNX Runtime runs them on the CPU between
// the GPU kernels, each a host round trip.

import (
	"fmt"
	"sort"
	"strings"

	"github.com/loracc/loracc/fold"
	"github.com/loracc/loracc/graph"
)

// concretize applies Options.Static to the model's dims before the other
// passes (run by Params), so the loss and the gradient rules see concrete
// shapes and pick their static forms; Specialize folds at the end.
func (st *Compiler) concretize(m *graph.Model) error {
	dims := st.opts.Static
	if len(dims) == 0 {
		return nil
	}
	used := map[string]bool{}
	for _, v := range m.Graph.Inputs {
		if v.Type != nil {
			for _, d := range v.Type.Shape {
				used[d.Param] = true
			}
		}
	}
	var unknown []string
	for name := range dims {
		if !used[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		var have []string
		for p := range used {
			if p != "" {
				have = append(have, p)
			}
		}
		sort.Strings(have)
		return fmt.Errorf("no input has the dims %s (symbolic dims of the inputs: %s)", strings.Join(unknown, ", "), strings.Join(have, ", "))
	}
	return fold.Concretize(m.Graph, dims)
}

// Specialize is pass "specialize".
func (st *Compiler) Specialize(m *graph.Model) error {
	dims := st.opts.Static
	if len(dims) == 0 {
		return nil
	}
	stats, err := fold.Specialize(m.Graph, dims)
	if err != nil {
		return err
	}
	st.logf("specialize: %d nodes folded into constants, %d removed", stats.Folded, stats.Removed)
	st.IO.Inputs, st.IO.Outputs = nil, nil
	for _, vs := range [][]*graph.Value{m.Graph.Inputs, m.Graph.Outputs} {
		for _, v := range vs {
			e := st.roles[v]
			e.Shape = shapeOf(v.Type)
			st.roles[v] = e
		}
	}
	for _, v := range m.Graph.Inputs {
		st.IO.Inputs = append(st.IO.Inputs, st.roles[v])
	}
	for _, v := range m.Graph.Outputs {
		st.IO.Outputs = append(st.IO.Outputs, st.roles[v])
	}
	return nil
}
