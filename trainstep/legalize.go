package trainstep

// Pass "legalize": ops without a bfloat16 kernel run in float32.
//
// --compute-dtype bf16 targets ONNX Runtime's CUDA provider, whose
// bfloat16 coverage is partial: an op it has no bfloat16 kernel for (Pad,
// ReduceMean, a gradient rule's Neg or Sqrt) has no kernel anywhere, since
// the CPU provider has fewer still, and the session fails to start
// ("Provider type ... is not set"); Sin and Cos do not even allow
// bfloat16 in ONNX's schema. This pass runs last, over the forward,
// backward and optimizer alike, as XLA legalizes types for its target:
// every node with a bfloat16 input whose op is not in BF16Kernel reads
// its bfloat16 inputs cast up and its bfloat16 outputs are cast back down
// for their readers. The table lists what ONNX Runtime 1.29's CUDA
// provider runs in bfloat16 (TestCUDABFloat16Kernels checks each entry
// on the GPU and reports ops outside it that would run too).
//
// Pre:  the graph's ops are final (after prune, specialize, fuse-cuda).
// Post: a no-op unless the compute dtype is bf16.

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// BF16Kernel reports whether ONNX Runtime's CUDA provider has a
// bfloat16 kernel for op (domain "" or com.microsoft). Data movement
// registers every type; the rest is measured (TestCUDABFloat16Kernels).
func BF16Kernel(domain, op string) bool {
	if domain == "com.microsoft" {
		switch op {
		case "FusedMatMul", "FastGelu", "Gelu", "QuickGelu", "BiasGelu", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
			"MatMulNBits": // measured on the H200 (TestCUDABFloat16Kernels, 2026-12-01, fifth session)
			return true
		}
		return false // BiasSoftmax among them
	}
	if domain != "" {
		return false
	}
	switch op {
	// measured on an H200 with ONNX Runtime 1.29 (TestCUDABFloat16Kernels,
	// 2026-12-01); without a kernel there: Cos, CumSum, Equal, Floor,
	// Greater, IsInf, Less, LessOrEqual, Log, LogSoftmax, Mean, Pad,
	// Reciprocal, ReduceMax, ReduceMean, ReduceMin, Round, Sin, Softplus
	case "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Abs", "Neg", "Sqrt", "Exp", "Erf", "Clip", "IsNaN", "Where",
		"Cast", "Softmax", "MatMul", "Gemm", "Relu", "Sigmoid", "Tanh", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Trilu",
		"LayerNormalization", "SimplifiedLayerNormalization",
		// data movement: kernels for every fixed-size type
		"Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Identity", "Flatten",
		"Gather", "GatherElements", "Expand", "Tile", "ScatterElements", "ScatterND", "Shape", "Size",
		"Constant", "ConstantOfShape": // their type is their value's

		return true
	}
	return false
}

// Legalize is pass "legalize".
func (st *Compiler) Legalize(m *graph.Model) error {
	if st.opts.ComputeDType != graph.BFloat16 {
		return nil
	}
	g := m.Graph
	inf := infer.New()
	b := &graph.Builder{G: g, Prefix: "legalize"}
	up := map[*graph.Value]*graph.Value{} // one Cast to float32 per value
	count := 0
	for _, n := range slices.Clone(g.Nodes) {
		if BF16Kernel(n.Domain, n.Op) || len(n.Subgraphs()) > 0 {
			continue
		}
		var slots []int
		for i, in := range n.Inputs() {
			if in != nil && inf.DType(in) == graph.BFloat16 {
				slots = append(slots, i)
			}
		}
		var outs []*graph.Value
		for _, o := range n.Outputs() {
			if o != nil && inf.DType(o) == graph.BFloat16 {
				outs = append(outs, o)
			}
		}
		if len(slots) == 0 && len(outs) == 0 {
			continue
		}
		for _, i := range slots {
			in := n.Input(i)
			c, ok := up[in]
			if !ok {
				c = b.Op("Cast", in.Name+".float32", []*graph.Value{in}, graph.AttrI("to", int64(graph.Float)))
				c.Type = retyped(in.Type, graph.Float)
				up[in] = c
			}
			n.SetInput(i, c)
		}
		for _, o := range outs {
			if o.IsGraphOutput() {
				return fmt.Errorf("node %q (%s): output %q is a graph output in bfloat16, which the op has no kernel for", n.Name, n.Op, o.Name)
			}
			uses := o.Uses()
			down := b.Op("Cast", o.Name+".bfloat16", []*graph.Value{o}, graph.AttrI("to", int64(graph.BFloat16)))
			down.Type = retyped(o.Type, graph.BFloat16)
			o.Type = retyped(o.Type, graph.Float)
			for _, u := range uses {
				u.Node.SetInput(u.Index, down)
			}
		}
		retypeAttrs(n)
		count++
	}
	st.inf = infer.New()
	if count > 0 {
		st.logf("legalize: %d nodes run in float32 (no bfloat16 kernel in ONNX Runtime's CUDA provider)", count)
	}
	return g.SortTopo()
}

// retyped is t with element type dt (nil stays nil: inference fills it).
func retyped(t *graph.TensorType, dt graph.DataType) *graph.TensorType {
	if t == nil {
		return nil
	}
	c := *t
	c.DType = dt
	return &c
}

// retypeAttrs fixes attributes that name the output type of n, which now
// computes in float32.
func retypeAttrs(n *graph.Node) {
	for _, name := range []string{"to", "dtype"} {
		if n.AttrInt(name, 0) == int64(graph.BFloat16) {
			n.SetAttr(graph.AttrI(name, int64(graph.Float)))
		}
	}
}
