package testmodels

import (
	"fmt"
	"math"
	"strconv"

	"github.com/loracc/loracc/graph"
)

// ExternalMLP is a chain of `layers` MatMul + Add layers with a Relu between
// consecutive ones, on x float32 [batch, hidden], with weights "fc<i>.weight"
// [hidden, hidden] and biases "fc<i>.bias" [hidden], i from 1. It exists to
// be saved with graph.SaveOptions{Externalize: true}: each weight is
// 4·hidden² bytes, so hidden=16384 gives 1 GiB a layer and three layers
// pass protobuf's 2 GiB limit.
//
// Weights are uniform in ±0.5/√hidden rather than ±0.5, PyTorch's default
// Linear scale up to a constant, so activations stay O(1) whatever hidden
// is and outputs stay finite at benchmark sizes.
//
// All weights are built in memory (layers · 4·hidden² bytes).
func ExternalMLP(layers, hidden int) (*graph.Model, error) {
	if layers < 1 || hidden < 1 {
		return nil, fmt.Errorf("testmodels: ExternalMLP needs layers ≥ 1 and hidden ≥ 1, got %d and %d", layers, hidden)
	}
	h := int64(hidden)
	m := newModel("external_mlp")
	g := m.Graph
	x := g.AddInput("x", tensorType(graph.Float, batch, fixed(h)))
	bound := float32(0.5 / math.Sqrt(float64(hidden)))
	cur := x
	for i := 1; i <= layers; i++ {
		name := "fc" + strconv.Itoa(i)
		w, err := uniform(name+".weight", graph.Float, []int64{h, h}, -bound, bound)
		if err != nil {
			return nil, err
		}
		bias, err := uniform(name+".bias", graph.Float, []int64{h}, -bound, bound)
		if err != nil {
			return nil, err
		}
		b := &graph.Builder{G: g, Prefix: name}
		out := name + ".out"
		if i == layers {
			out = "y"
		}
		mm := b.Op("MatMul", name+".matmul", []*graph.Value{cur, b.Const(w)})
		cur = b.Op("Add", out, []*graph.Value{mm, b.Const(bias)})
		if i < layers {
			cur = b.Op("Relu", name+".relu", []*graph.Value{cur})
		}
	}
	cur.Type = tensorType(graph.Float, batch, fixed(h))
	g.AddOutput(cur)
	return m, nil
}
