package trainstep

// The data-parallel step, split where the gradients are. Each rank runs
// the gradient graph on its shard of the batch; the ranks sum its
// outputs (an all-reduce, outside ONNX); every rank then runs the
// optimizer graph on the sums and so makes the same update. The loss of
// the whole batch is a mean over every rank's counted terms, so the
// gradient graph outputs sums and counts, not means:
//
//   grad.onnx  = params → canonicalize → loss (Sums) → autodiff → grads → prune
//                batch, labels, params  →  loss_sum, loss_count, <p>.grad
//   optim.onnx = params → reduced-grads → optimizer → prune
//                params, state, lr, step, Σ<p>.grad, Σloss_count
//                  →  grad_norm, updates_finite, <p>.new, <state>.new
//
// The optimizer graph divides the summed gradients by the global count
// (at least 1, as the fused step's mean does), then clips their global
// norm and steps exactly as the fused train.onnx does; its forward model
// is pruned away. One process running both graphs computes the fused
// step's update up to the order of float additions.
//
// Pass "grads".
//
// Pre:  autodiff ran with Options.Sums.
// Post: the outputs are "loss_sum" (role loss_sum), "loss_count" (role
//       count, int64) and "<p>.grad" (role grad, d loss_sum / d p) for
//       every param, in param order.
//
// Pass "reduced-grads".
//
// Pre:  params ran; loss and autodiff did not.
// Post: inputs "<p>.grad" (role grad: the gradient of the loss sum,
//       summed over the ranks) for every param and "loss_count" (role
//       count, int64 scalar: the terms counted over the ranks); the
//       optimizer's gradients are Σgrad / max(Σcount, 1).

import (
	"fmt"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/trainio"
)

// Count is the name of the count output of grad.onnx and input of
// optim.onnx.
const Count = "loss_count"

// lossSums names the summed loss and its count as the gradient graph's
// outputs (pass loss with Sums).
func (st *Compiler) lossSums(c *opb.Builder, sum, count *graph.Value) error {
	out := c.Named("Identity", "loss_sum", ops(sum))
	out.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.inf.Set(out, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
	n := c.Named("Identity", Count, ops(count))
	n.Type = &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{}}
	st.inf.Set(n, infer.Info{DType: graph.Int64, Rank: 0, Dims: []graph.Dim{}})
	if err := c.Err(); err != nil {
		return err
	}
	st.loss, st.count = out, n
	st.role(out, trainio.RoleLossSum, "")
	st.role(n, trainio.RoleCount, "")
	return nil
}

// Grads is pass "grads".
func (st *Compiler) Grads(m *graph.Model) error {
	if !st.opts.Sums || st.count == nil {
		return fmt.Errorf("the gradient graph needs the loss as a sum and a count (Options.Sums)")
	}
	if st.opts.ComputeDType == graph.Float16 {
		// Its overflow skip would have to be agreed across ranks.
		return fmt.Errorf("--compute-dtype fp16 (dynamic loss scaling) and the split step of data-parallel training do not combine yet; use bf16 or fp32")
	}
	st.outputs = append(st.outputs, st.loss, st.count)
	for i, g := range st.grads {
		p := st.params[i]
		if g.Name != p.Name+".grad" {
			if err := g.Rename(m.Graph.UniqueName(p.Name + ".grad")); err != nil {
				return err
			}
		}
		st.gradOutput(g, p)
		st.outputs = append(st.outputs, g)
	}
	return nil
}

// ReducedGrads is pass "reduced-grads".
func (st *Compiler) ReducedGrads(m *graph.Model) error {
	if st.loss != nil {
		return fmt.Errorf("the optimizer graph takes its gradients as inputs; it has no loss of its own")
	}
	if len(st.params) == 0 {
		return fmt.Errorf("no params (pass params must run first)")
	}
	g := m.Graph
	b := opb.New(m, "reduced", "reduced", st.inf)
	count := g.AddInput(Count, &graph.TensorType{DType: graph.Int64, Shape: []graph.Dim{}})
	st.inf.Set(count, infer.Info{DType: graph.Int64, Rank: 0, Dims: []graph.Dim{}})
	st.role(count, trainio.RoleCount, "")
	denom := b.Max(b.Cast(count, graph.Float), b.K(1, st.params[0]))
	st.grads = make([]*graph.Value, len(st.params))
	for i, p := range st.params {
		name := p.Name + ".grad"
		if g.Lookup(name) != nil {
			return fmt.Errorf("the gradient input name %q is already used in the model", name)
		}
		tt := *p.Type
		in := g.AddInput(name, &tt)
		st.inf.Set(in, st.inf.Info(p))
		st.role(in, trainio.RoleGrad, "")
		st.grads[i] = b.Div(in, denom)
		st.inf.Set(st.grads[i], st.inf.Info(p))
	}
	return b.Err()
}
