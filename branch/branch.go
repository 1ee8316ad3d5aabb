// Package branch is the one definition of a LoRA branch in a graph: how
// inject names its tensors, how they are laid out, how the branch is found
// again, and how an adapter's layers map onto graph tensors and back.
//
// inject builds branches, strip and fuse remove them, the training passes
// turn their tensors into parameters, the training runtime and
// export-adapter lay adapters out as those tensors. They all read the
// layout here, so it is written down once. The package imports only graph
// and adapter, so passes and the runtime may both depend on it.
package branch

import (
	"fmt"
	"sort"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
)

// Key is the node metadata key that marks the nodes of a branch; its
// value is the target's name.
const Key = "loracc.lora_branch"

// Tensor names of target t's branch: A = lora_Aᵀ [in, r], B = lora_Bᵀ
// [r, out] and the scalar scale alpha/r (kept apart, never folded into B,
// so PEFT's values survive a round trip exactly).
func AName(target string) string     { return target + ".lora_A" }
func BName(target string) string     { return target + ".lora_B" }
func ScaleName(target string) string { return target + ".lora_scale" }

// Deployment names of target t's A and B as onnxruntime-genai's model
// builder writes a LoRA MatMul's weight (after the node
// "/model/layers.0/attn/q_proj/lora_A/MatMul"), the names Olive's adapters
// and the Adapters API feed. Under these names B carries the scale
// (scale·lora_Bᵀ) and the graph's scale is 1, as the builder does.
func GenaiAName(target string) string { return target + ".lora_A.MatMul.weight" }
func GenaiBName(target string) string { return target + ".lora_B.MatMul.weight" }

// IsGenaiNamed says whether a branch takes its tensors under the
// deployment names (B scaled, scale 1).
func (b *Branch) IsGenaiNamed() bool {
	return b.A != nil && b.B != nil && b.A.Name == GenaiAName(b.Target) && b.B.Name == GenaiBName(b.Target)
}

// ErrDeploymentNames is returned for training a graph whose branches take
// their adapter under onnxruntime-genai's names: such a graph multiplies by
// 1 and takes scale·B, so training it would learn under another scale than
// the adapter's alpha/r.
func ErrDeploymentNames(b *Branch) error {
	return fmt.Errorf("branch %q takes its adapter under onnxruntime-genai's names (%q, scale folded into lora_B), a model for deployment: train the model injected without --adapter-inputs, then write the adapter for this one with loracc export-adapter --model", b.Target, b.A.Name)
}

// Trainable fails with ErrDeploymentNames on the first branch of g that
// takes onnxruntime-genai's names.
func Trainable(g *graph.Graph) error {
	bs, err := Find(g)
	if err != nil {
		return err
	}
	for _, b := range bs {
		if b.IsGenaiNamed() {
			return ErrDeploymentNames(b)
		}
	}
	return nil
}

// Branch is one branch inject added beside a target:
// y = base(x) + scale·((x·A)·B), possibly with Casts around it.
type Branch struct {
	Target string
	// A [in, r] and B [r, out]: initializers or graph inputs of the main
	// graph, read by the first and second MatMul of the branch.
	A, B *graph.Value
	// Scale is the scalar the product is multiplied by (nil if missing).
	Scale *graph.Value
	// Nodes are the branch's nodes in graph order.
	Nodes []*graph.Node
}

// Find returns the branches of m's graph (subgraphs included), sorted by
// target name. A branch missing one of its two MatMuls, or with more, is
// an error naming it.
func Find(g *graph.Graph) ([]*Branch, error) {
	byName := map[string]*Branch{}
	var err error
	g.Walk(func(n *graph.Node) {
		name := n.MetadataValue(Key)
		if name == "" {
			return
		}
		b := byName[name]
		if b == nil {
			b = &Branch{Target: name}
			byName[name] = b
		}
		b.Nodes = append(b.Nodes, n)
		switch n.Op {
		case "MatMul":
			// The first MatMul of a branch reads A, the second B (inject
			// builds them in that order and places them in that order).
			switch {
			case b.A == nil:
				b.A = n.Input(1)
			case b.B == nil:
				b.B = n.Input(1)
			default:
				err = fmt.Errorf("branch %q has more than two MatMuls", name)
			}
		case "Mul":
			b.Scale = n.Input(1)
		}
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Branch, 0, len(byName))
	for _, b := range byName {
		if b.A == nil || b.B == nil {
			return nil, fmt.Errorf("branch %q is incomplete (it needs two MatMuls)", b.Target)
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Target < out[j].Target })
	return out, nil
}

// Of returns the target name of the branch that reads n's output, "" when
// none does.
func Of(n *graph.Node) string {
	out := n.Output(0)
	if out == nil {
		return ""
	}
	for _, u := range out.Uses() {
		if name := u.Node.MetadataValue(Key); name != "" {
			return name
		}
	}
	return ""
}

// Param is one graph tensor of an adapter layer, float32 values.
type Param struct {
	Name  string
	Shape []int64
	Data  []float32
}

// Params lays a PEFT layer (lora_A [r, in], lora_B [out, r]) out as the
// branch's graph tensors: A = lora_Aᵀ [in, r], then B = lora_Bᵀ [r, out].
func Params(l adapter.Layer) [2]Param {
	return [2]Param{
		{Name: AName(l.Name), Shape: []int64{int64(l.In), int64(l.Rank)}, Data: adapter.Transpose(l.A, l.Rank, l.In)},
		{Name: BName(l.Name), Shape: []int64{int64(l.Rank), int64(l.Out)}, Data: adapter.Transpose(l.B, l.Out, l.Rank)},
	}
}

// FromParams is the inverse of Params: a copy of l holding graph values
// a [in, r] and b [r, out].
func FromParams(l adapter.Layer, a, b []float32) (adapter.Layer, error) {
	if len(a) != l.In*l.Rank || len(b) != l.Rank*l.Out {
		return adapter.Layer{}, fmt.Errorf("layer %q: params have %d and %d values, want %d and %d", l.Name, len(a), len(b), l.In*l.Rank, l.Rank*l.Out)
	}
	nl := l
	nl.A = adapter.Transpose(a, l.In, l.Rank)
	nl.B = adapter.Transpose(b, l.Rank, l.Out)
	return nl, nil
}
