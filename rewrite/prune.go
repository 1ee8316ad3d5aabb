package rewrite

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

func prunePass(m *graph.Model, c *Context) error {
	st := c.train()
	if st.loss == nil {
		return fmt.Errorf("prune needs the loss pass first")
	}
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
	c.logf("prune: removed %d nodes nothing needs", n)
	c.IO.Inputs, c.IO.Outputs = nil, nil
	for _, v := range g.Inputs {
		e, ok := st.roles[v]
		if !ok {
			st.role(v, trainio.RoleBatch, "")
			e = st.roles[v]
		}
		c.IO.Inputs = append(c.IO.Inputs, e)
	}
	for _, v := range g.Outputs {
		e, ok := st.roles[v]
		if !ok {
			return fmt.Errorf("output %q has no role", v.Name)
		}
		c.IO.Outputs = append(c.IO.Outputs, e)
	}
	return nil
}
