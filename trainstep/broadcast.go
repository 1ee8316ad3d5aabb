package trainstep

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// expandSharedBroadcasts is fuse-cuda's expand-broadcasts: a small
// operand that several large elementwise nodes broadcast — the causal
// and padding mask [B, 1, T, T] of every layer's Where, RoPE's cos and
// sin [B, 1, T, D] of every q and k — is expanded to their shape once a
// step, and those nodes read the copy. ONNX Runtime's CUDA kernels for a
// broadcast compute each element's index with a divmod per dimension
// (except for a scalar or, in a binary node's second input, one
// non-trivial dim); with every operand full-sized or scalar they take
// the plain path. Measured on an H200 (Nsight Compute, bf16): the mask's
// Where over [4, 32, 512, 512] took 122 µs, three times its bytes' time
// at the memory's bandwidth, and RoPE's Mul over [4, 32, 512, 128] 36 µs
// where a same-sized Add without broadcasting took 20. The copy costs one
// write and the memory of one full tensor for the step (the mask: 32 MiB
// of bool on the 7B at 4 × 512). Exact: the same values are read.
func expandSharedBroadcasts(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	b := opb.New(m, "fuse_cuda", "fuse_cuda", inf)
	type site struct {
		node *graph.Node
		in   int
	}
	groups := map[*graph.Value]map[string][]site{} // operand → output dims → readers
	var order []*graph.Value
	for _, n := range g.Nodes {
		if !plainBroadcastOp(n) {
			continue
		}
		od, ok := staticDims(inf, n.Output(0))
		if !ok || product(od) < 1<<12 { // small nodes run at their launch cost either way
			continue
		}
		var small []int
		full := true
		for i, in := range n.Inputs() {
			d, ok := staticDims(inf, in)
			switch {
			case !ok:
				full = false
			case product(d) == 1 || slices.Equal(d, od):
			case broadcastsTo(d, od) && !(n.Op != "Where" && i == 1 && oneNonUnitDim(d)):
				small = append(small, i)
			default:
				full = false // broadcast ORT takes its fast path for, or not a broadcast
			}
		}
		if !full || len(small) != 1 { // expanding one operand makes the node plain
			continue
		}
		v := n.Input(small[0])
		if groups[v] == nil {
			groups[v] = map[string][]site{}
			order = append(order, v)
		}
		key := fmt.Sprint(od)
		groups[v][key] = append(groups[v][key], site{n, small[0]})
	}
	count := 0
	for _, v := range order {
		keys := make([]string, 0, len(groups[v]))
		for k := range groups[v] {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			sites := groups[v][k]
			if len(sites) < 2 { // one reader: the copy would cost what it saves
				continue
			}
			od, _ := staticDims(inf, sites[0].node.Output(0))
			e := b.Expand(v, b.Ints(od...))
			if err := b.Err(); err != nil {
				return count, err
			}
			for _, s := range sites {
				s.node.SetInput(s.in, e)
			}
			count++
		}
	}
	return count, nil
}

// plainBroadcastOp reports whether n is an elementwise node of the
// default domain whose operands broadcast (ONNX Runtime's binary and
// ternary elementwise kernels).
func plainBroadcastOp(n *graph.Node) bool {
	if n.Domain != "" || len(n.Outputs()) != 1 {
		return false
	}
	switch n.Op {
	case "Add", "Sub", "Mul", "Div":
		return n.NumInputs() == 2
	case "Where":
		return n.NumInputs() == 3
	}
	return false
}

// broadcastsTo says whether dims d broadcast to od (numpy rules, d no
// longer than od) without being od.
func broadcastsTo(d, od []int64) bool {
	if len(d) > len(od) {
		return false
	}
	off := len(od) - len(d)
	for i, x := range d {
		if x != 1 && x != od[off+i] {
			return false
		}
	}
	return true
}

// oneNonUnitDim says whether exactly one of d's dims is not 1 (ONNX
// Runtime's per-channel broadcast of a binary node's second input).
func oneNonUnitDim(d []int64) bool {
	k := 0
	for _, x := range d {
		if x != 1 {
			k++
		}
	}
	return k == 1
}
