package rewrite

// Pass "autodiff".
//
// Pre:  params and loss ran.
// Post: c's train state holds d loss / d p for every adapter tensor p
//       (zeros, with a note, for a tensor the loss does not reach).
//
// Pass "optimizer".
//
// Pre:  autodiff ran.
// Post: inputs "lr" and "step" (float32 scalars; step counts from 1) and
//       per-parameter state inputs; outputs "grad_norm" (global L2 norm of
//       the adapter gradients, before clipping), "<p>.new" for every
//       parameter and "<state>.new" for every state, computing one step of:
//   adamw — PyTorch's AdamW: p ← p·(1 − lr·wd); m ← m + (1−β1)(g − m);
//           v ← β2·v + (1−β2)·g²; p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
//   sgd   — PyTorch's SGD: d = g + wd·p; with momentum μ: b ← μ·b + d,
//           d = b; p ← p − lr·d.
//       With ClipNorm C > 0, gradients are first scaled by
//       min(1, C / (‖g‖ + 1e-6)) as torch.nn.utils.clip_grad_norm_ does.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/trainio"
)

func autodiffPass(m *graph.Model, c *Context) error {
	st := c.train()
	if st.loss == nil || len(st.params) == 0 {
		return fmt.Errorf("autodiff needs the params and loss passes first")
	}
	grads, err := Gradients(m, st.loss, st.params)
	if err != nil {
		return err
	}
	gc := newGradCtx(m, "grad/zero", st.inf)
	for i, g := range grads {
		if g == nil {
			p := st.params[i]
			c.logf("note: the loss does not depend on %q; its gradient is zero", p.Name)
			zero := graph.NewTensor("", graph.Float, []int64{1}, make([]byte, 4))
			grads[i] = gc.op("ConstantOfShape", vals(gc.shape(p)), graph.AttrT("value", zero))
		}
		st.inf.set(grads[i], st.inf.info(st.params[i]))
	}
	st.grads = grads
	if c.Train.EmitGrads {
		for i, g := range grads {
			p := st.params[i]
			tt := *p.Type
			g.Type = &tt
			st.role(g, trainio.RoleGrad, "")
			st.emitted = append(st.emitted, g)
		}
	}
	return nil
}

func optimizerPass(m *graph.Model, c *Context) error {
	st := c.train()
	if st.grads == nil {
		return fmt.Errorf("optimizer needs the autodiff pass first")
	}
	o := c.Train
	g := m.Graph
	b := newGradCtx(m, "optim", st.inf)
	scalarInput := func(name, role string) *graph.Value {
		v := g.AddInput(name, &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}})
		st.inf.set(v, staticInfo{dt: graph.Float, rank: 0, dims: []graph.Dim{}})
		st.role(v, role, "")
		return v
	}
	k := func(x float64) *graph.Value {
		v, _ := b.scalar(x, st.loss) // float32 constants
		return v
	}
	lr := scalarInput("lr", trainio.RoleLR)
	step := scalarInput("step", trainio.RoleStep)

	// Global gradient norm, before clipping.
	var squares []*graph.Value
	for _, gr := range st.grads {
		squares = append(squares, b.op("ReduceSum", vals(b.op("Mul", vals(gr, gr))), graph.AttrI("keepdims", 0)))
	}
	sq := squares[0]
	if len(squares) > 1 {
		sq = b.op("Sum", squares)
	}
	norm := b.b.Op("Sqrt", "grad_norm", vals(sq))
	norm.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.role(norm, trainio.RoleGradNorm, "")
	st.outputs = append(st.outputs, st.loss, norm)
	st.outputs = append(st.outputs, st.emitted...)
	grads := st.grads
	if o.ClipNorm > 0 {
		coef := b.op("Div", vals(k(o.ClipNorm), b.op("Add", vals(norm, k(1e-6)))))
		coef = b.op("Min", vals(coef, k(1)))
		clipped := make([]*graph.Value, len(grads))
		for i, gr := range grads {
			clipped[i] = b.op("Mul", vals(gr, coef))
		}
		grads = clipped
	}

	state := func(p *graph.Value, suffix string) *graph.Value {
		v := g.AddInput(p.Name+suffix, p.Type)
		st.inf.set(v, st.inf.info(p))
		st.role(v, trainio.RoleState, "")
		return v
	}
	output := func(v *graph.Value, of *graph.Value, role string) error {
		if err := v.Rename(g.UniqueName(of.Name + ".new")); err != nil {
			return err
		}
		tt := *of.Type
		v.Type = &tt
		st.role(v, role, of.Name)
		st.outputs = append(st.outputs, v)
		return nil
	}
	switch o.Optimizer {
	case "adamw":
		// Bias corrections, shared by every parameter.
		bc1 := b.op("Sub", vals(k(1), b.op("Pow", vals(k(o.Beta1), step))))
		bc2 := b.op("Sub", vals(k(1), b.op("Pow", vals(k(o.Beta2), step))))
		stepSize := b.op("Div", vals(lr, bc1))
		bc2Sqrt := b.op("Sqrt", vals(bc2))
		decay := b.op("Sub", vals(k(1), b.op("Mul", vals(lr, k(o.WeightDecay)))))
		for i, p := range st.params {
			gr := grads[i]
			mIn, vIn := state(p, ".adam_m"), state(p, ".adam_v")
			pd := p
			if o.WeightDecay != 0 {
				pd = b.op("Mul", vals(p, decay))
			}
			mNew := b.op("Add", vals(mIn, b.op("Mul", vals(b.op("Sub", vals(gr, mIn)), k(1-o.Beta1)))))
			vNew := b.op("Add", vals(b.op("Mul", vals(vIn, k(o.Beta2))), b.op("Mul", vals(b.op("Mul", vals(gr, gr)), k(1-o.Beta2)))))
			denom := b.op("Add", vals(b.op("Div", vals(b.op("Sqrt", vals(vNew)), bc2Sqrt)), k(o.Eps)))
			pNew := b.op("Sub", vals(pd, b.op("Mul", vals(b.op("Div", vals(mNew, denom)), stepSize))))
			if err := output(pNew, p, trainio.RoleUpdatedParam); err != nil {
				return err
			}
			if err := output(mNew, mIn, trainio.RoleUpdatedState); err != nil {
				return err
			}
			if err := output(vNew, vIn, trainio.RoleUpdatedState); err != nil {
				return err
			}
		}
	case "sgd":
		for i, p := range st.params {
			d := grads[i]
			if o.WeightDecay != 0 {
				d = b.op("Add", vals(d, b.op("Mul", vals(p, k(o.WeightDecay)))))
			}
			if o.Momentum != 0 {
				buf := state(p, ".momentum")
				d = b.op("Add", vals(b.op("Mul", vals(buf, k(o.Momentum))), d))
				if err := output(d, buf, trainio.RoleUpdatedState); err != nil {
					return err
				}
			}
			pNew := b.op("Sub", vals(p, b.op("Mul", vals(d, lr))))
			if err := output(pNew, p, trainio.RoleUpdatedParam); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("unknown optimizer %q (want adamw or sgd)", o.Optimizer)
	}
	return nil
}
