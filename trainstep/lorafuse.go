package trainstep

// Part of pass "canonicalize": LoRA branches that read the same input.
//
// Llama's q, k and v projections read one normalized hidden state, so
// their branches compute x·A_q, x·A_k and x·A_v: three narrow GEMMs
// ([tokens, in] × [in, r]) that each read x, and in the backward three
// more that each write an x-sized gradient, summed after. With the A
// matrices concatenated, x·[A_q | A_k | A_v] is one GEMM whose result
// is split into the three [tokens, r] pieces; the backward is then one
// GEMM for x's gradient (through Split's rule, a Concat of the pieces'
// gradients) and one for the A's (through Concat's rule, a Split).
// Every output element is the same dot product as before.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
)

// fuseSharedInputBranches concatenates the lora_A parameters of branches
// whose x·A products read the same x, and returns how many products it
// merged away.
func (st *Compiler) fuseSharedInputBranches(m *graph.Model) (int, error) {
	g := m.Graph
	param := map[*graph.Value]bool{}
	for _, p := range st.params {
		param[p] = true
	}
	// rank is r of a parameter [in, r] feeding MatMul(x, A), 0 if unknown.
	rank := func(a *graph.Value) (int64, int64) {
		if a.Type == nil || len(a.Type.Shape) != 2 || !a.Type.Shape[0].Known() || !a.Type.Shape[1].Known() {
			return 0, 0
		}
		return a.Type.Shape[0].Value, a.Type.Shape[1].Value
	}
	groups := map[*graph.Value][]*graph.Node{}
	var order []*graph.Value
	for _, n := range g.Nodes {
		if n.Op != "MatMul" || n.Domain != "" || n.NumInputs() != 2 || !param[n.Input(1)] || n.Input(1).NumUses() != 1 || n.Output(0).IsGraphOutput() {
			continue
		}
		if in, r := rank(n.Input(1)); in == 0 || r == 0 {
			continue
		}
		x := n.Input(0)
		if groups[x] == nil {
			order = append(order, x)
		}
		groups[x] = append(groups[x], n)
	}
	merged := 0
	for _, x := range order {
		ns := groups[x]
		if len(ns) < 2 {
			continue
		}
		in0, _ := rank(ns[0].Input(1))
		same := true
		for _, n := range ns {
			in, _ := rank(n.Input(1))
			same = same && in == in0
		}
		if !same {
			continue
		}
		as := make([]*graph.Value, len(ns))
		sizes := make([]int64, len(ns))
		names := make([]string, len(ns))
		var total int64
		for i, n := range ns {
			as[i] = n.Input(1)
			_, sizes[i] = rank(as[i])
			total += sizes[i]
			names[i] = n.Output(0).Name
		}
		b := &graph.Builder{G: g, Prefix: "canonical/lora_concat", Metadata: ns[0].Metadata}
		acat := b.Op("Concat", as[0].Name+".concat", as, graph.AttrI("axis", 1))
		acat.Type = &graph.TensorType{DType: as[0].Type.DType, Shape: []graph.Dim{{Value: in0}, {Value: total}}}
		xa := b.Op("MatMul", names[0]+".concat", []*graph.Value{x, acat})
		tmp := make([]string, len(ns))
		for i := range tmp {
			tmp[i] = fmt.Sprintf("%s.part%d", xa.Name, i)
		}
		var parts []*graph.Value
		if m.OpsetVersion("") >= 13 {
			parts = b.OpN("Split", tmp, []*graph.Value{xa, b.Int64s(xa.Name+".sizes", sizes)}, graph.AttrI("axis", -1))
		} else {
			parts = b.OpN("Split", tmp, []*graph.Value{xa}, graph.AttrI("axis", -1), graph.AttrIs("split", sizes...))
		}
		for i, n := range ns {
			old := n.Output(0)
			typ, doc, meta := old.Type, old.DocString, old.Metadata
			old.ReplaceAllUsesWith(parts[i])
			if err := g.RemoveNode(n); err != nil {
				return merged, err
			}
			if err := parts[i].Rename(names[i]); err != nil {
				return merged, err
			}
			parts[i].Type, parts[i].DocString, parts[i].Metadata = typ, doc, meta
		}
		merged += len(ns) - 1
	}
	if merged > 0 {
		return merged, g.SortTopo()
	}
	return 0, nil
}
