// Package train runs compiled training graphs: the step loop with its
// learning-rate schedule, evaluation, checkpoints that survive crashes,
// metrics and resumption. It knows graphs only through train.json
// (package trainio) and feeds ONNX Runtime through package runtime.
package train

import (
	"fmt"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/runtime"
)

// Params holds the adapter tensors as the training graph takes them:
// the branch tensors of package branch, float32.
type Params map[string]runtime.Tensor

// FromAdapter lays out a PEFT adapter as graph params (branch.Params).
func FromAdapter(a *adapter.Adapter) Params {
	p := Params{}
	for _, l := range a.Layers {
		for _, t := range branch.Params(l) {
			p[t.Name] = runtime.FloatTensor(t.Shape, t.Data)
		}
	}
	return p
}

// ToAdapter writes params back into a copy of the adapter's layout.
func ToAdapter(p Params, like *adapter.Adapter) (*adapter.Adapter, error) {
	out := &adapter.Adapter{Config: like.Config}
	for _, l := range like.Layers {
		an, bn := branch.AName(l.Name), branch.BName(l.Name)
		av, err := p[an].Floats()
		if err != nil {
			return nil, fmt.Errorf("param %q: %w", an, err)
		}
		bv, err := p[bn].Floats()
		if err != nil {
			return nil, fmt.Errorf("param %q: %w", bn, err)
		}
		nl, err := branch.FromParams(l, av, bv)
		if err != nil {
			return nil, err
		}
		out.Layers = append(out.Layers, nl)
	}
	return out, nil
}
