package trainstep

// Pass "unroll".
//
// Pre:  a pruned training graph (params → ... → prune), and
//       st.opts.StepsPerRun = K > 1.
// Post: one run performs K optimizer steps: the step graph is copied K
//       times, copy k reading the k-th equal slice (along the batch axis)
//       of every batch and label input, lr[k] and step[k] from inputs now
//       of shape [K], and the params and state copy k−1 updated. Outputs
//       are the last copy's updated params and state under their usual
//       names, and "loss" and "grad_norm" of shape [K].
//
// Why: between runs the host must take the updated adapter and optimizer
// state out of ONNX Runtime and feed them back in. On a GPU that is a
// device→host→device round trip per step; with K steps per run it happens
// once per K steps, while every tensor of the K steps stays on the device.

import (
	"fmt"
	"strconv"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/trainio"
)

func (st *Compiler) Unroll(m *graph.Model) error {
	k := st.opts.StepsPerRun
	if k <= 1 {
		return nil
	}
	if st.opts.EmitGrads {
		return fmt.Errorf("--emit-grads and --steps-per-run > 1 do not combine")
	}
	g := m.Graph
	if m.OpsetVersion("") < 10 {
		return fmt.Errorf("steps per run need opset ≥ 10 (run-time Slice); the model has %d", m.OpsetVersion(""))
	}
	if err := g.SortTopo(); err != nil {
		return err
	}
	nodes := append([]*graph.Node(nil), g.Nodes...)
	role := func(v *graph.Value) trainio.Entry { return st.roles[v] }
	var batch []*graph.Value
	carried := map[*graph.Value]*graph.Value{}
	byName := map[string]*graph.Value{}
	for _, in := range g.Inputs {
		byName[in.Name] = in
		switch role(in).Role {
		case trainio.RoleBatch, trainio.RoleLabel:
			batch = append(batch, in)
		case trainio.RoleParam, trainio.RoleState:
			carried[in] = in
		}
	}
	if len(batch) == 0 {
		return fmt.Errorf("no batch input to split into steps")
	}
	b := opb.New(m, "unroll", "unroll", st.inf)
	rows := b.SliceT(b.Shape(batch[0]), b.Ints(0), b.Ints(1), b.Ints(0))
	micro := b.Div(rows, b.Ints(int64(k)))
	var losses, norms, flags []*graph.Value
	final := map[*graph.Value]*graph.Value{}
	for step := 0; step < k; step++ {
		suffix := "@" + strconv.Itoa(step)
		mp := map[*graph.Value]*graph.Value{}
		lo := b.Mul(micro, b.Ints(int64(step)))
		hi := b.Mul(micro, b.Ints(int64(step+1)))
		idx := (&graph.Builder{G: g}).Int64s("unroll.step"+suffix, []int64{int64(step)})
		scalarIdx := b.Reshape(idx, b.Ints())
		for _, in := range g.Inputs {
			switch role(in).Role {
			case trainio.RoleBatch, trainio.RoleLabel:
				mp[in] = b.SliceT(in, lo, hi, b.Ints(0))
			case trainio.RoleLR, trainio.RoleStep:
				mp[in] = b.Gather(in, scalarIdx, 0)
			case trainio.RoleParam, trainio.RoleState:
				mp[in] = carried[in]
			}
		}
		for _, n := range nodes {
			ins := n.Inputs()
			for i, v := range ins {
				if w, ok := mp[v]; ok {
					ins[i] = w
				}
			}
			cl, err := g.CloneNode(n, ins, suffix)
			if err != nil {
				return err
			}
			for i, o := range n.Outputs() {
				if o != nil {
					mp[o] = cl.Output(i)
				}
			}
		}
		for _, o := range g.Outputs {
			e := role(o)
			switch e.Role {
			case trainio.RoleUpdatedParam, trainio.RoleUpdatedState:
				carried[byName[e.Replaces]] = mp[o]
			case trainio.RoleLoss:
				losses = append(losses, b.Unsqueeze(mp[o], 0))
			case trainio.RoleGradNorm:
				norms = append(norms, b.Unsqueeze(mp[o], 0))
			case trainio.RoleFinite:
				flags = append(flags, b.Unsqueeze(mp[o], 0))
			}
			final[o] = mp[o]
		}
	}
	// The graph's outputs become the last copy's, under their old names,
	// and the per-step losses and norms as vectors.
	var outs []*graph.Value
	for _, o := range g.Outputs {
		e := role(o)
		var nv *graph.Value
		switch e.Role {
		case trainio.RoleLoss:
			nv = b.Concat(0, losses...)
		case trainio.RoleGradNorm:
			nv = b.Concat(0, norms...)
		case trainio.RoleFinite:
			nv = b.Concat(0, flags...)
		default:
			nv = final[o]
		}
		name, tt := o.Name, o.Type
		if err := o.Rename(g.UniqueName(name + "@single")); err != nil {
			return err
		}
		if err := nv.Rename(name); err != nil {
			return err
		}
		if tt != nil {
			t2 := *tt
			if e.Role == trainio.RoleLoss || e.Role == trainio.RoleGradNorm || e.Role == trainio.RoleFinite {
				t2.Shape = []graph.Dim{{Value: int64(k)}}
			}
			nv.Type = &t2
		}
		st.roles[nv] = IOEntry{Name: name, DType: e.DType, Shape: shapeOf(nv.Type), Role: e.Role, Replaces: e.Replaces}
		outs = append(outs, nv)
	}
	g.Outputs = outs
	for _, in := range g.Inputs {
		e := role(in)
		if e.Role == trainio.RoleLR || e.Role == trainio.RoleStep {
			in.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: int64(k)}}}
			e.Shape = shapeOf(in.Type)
			st.roles[in] = e
		}
	}
	if _, err := g.Prune(); err != nil {
		return err
	}
	st.IO.Inputs, st.IO.Outputs = nil, nil
	for _, v := range g.Inputs {
		st.IO.Inputs = append(st.IO.Inputs, st.roles[v])
	}
	for _, v := range g.Outputs {
		st.IO.Outputs = append(st.IO.Outputs, st.roles[v])
	}
	return nil
}
