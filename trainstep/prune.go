package trainstep

// Pass "prune".
//
// Pre:  loss ran (and optimizer, for a training graph).
// Post: the graph's outputs are exactly the training outputs (loss,
//       grad_norm, updated params and state) or, without an optimizer,
//       the loss alone; nodes, constants and inputs they do not need are
//       gone (the model's own outputs such as logits among them); c.IO
//       lists the remaining inputs and outputs with their roles.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/trainio"
)

func (st *Compiler) Prune(m *graph.Model) error {
	g := m.Graph
	outs := st.outputs
	if outs == nil {
		outs = []*graph.Value{st.loss}
	}
	g.Outputs = append([]*graph.Value(nil), outs...)
	n, err := g.Prune()
	if err != nil {
		return err
	}
	st.logf("prune: removed %d nodes nothing needs", n)
	st.IO.Inputs, st.IO.Outputs = nil, nil
	for _, v := range g.Inputs {
		e, ok := st.roles[v]
		if !ok {
			st.role(v, trainio.RoleBatch, "")
			e = st.roles[v]
		}
		st.IO.Inputs = append(st.IO.Inputs, e)
	}
	for _, v := range g.Outputs {
		e, ok := st.roles[v]
		if !ok {
			return fmt.Errorf("output %q has no role", v.Name)
		}
		st.IO.Outputs = append(st.IO.Outputs, e)
	}
	return nil
}
