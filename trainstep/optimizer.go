package trainstep

// Pass "autodiff".
//
// Pre:  params and loss ran.
// Post: c's train state holds d loss / d p for every adapter tensor p
//       (zeros, with a note, for a tensor the loss does not reach).
//
// Pass "optimizer".
//
// Pre:  autodiff ran, or reduced-grads (split.go) made the gradients
//       inputs.
// Post: inputs "lr" and "step" (float32 scalars; step counts from 1) and
//       per-parameter state inputs; outputs "updates_finite" (float32 1
//       when every updated param and state value is finite, else 0),
//       "grad_norm" (global L2 norm of the adapter gradients, before
//       clipping), "<p>.new" for every
//       parameter and "<state>.new" for every state, computing one step of:
//   adamw — PyTorch's AdamW: p ← p·(1 − lr·wd); m ← m + (1−β1)(g − m);
//           v ← β2·v + (1−β2)·g²; p ← p − lr/(1−β1^t) · m / (√v/√(1−β2^t) + ε)
//   sgd   — PyTorch's SGD: d = g + wd·p; with momentum μ: b ← μ·b + d,
//           d = b; p ← p − lr·d.
//       With ClipNorm C > 0, gradients are first scaled by
//       min(1, C / (‖g‖ + 1e-6)) as torch.nn.utils.clip_grad_norm_ does.

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/autodiff"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
	"github.com/loracc/loracc/trainio"
)

func (st *Compiler) Autodiff(m *graph.Model) error {
	target := st.loss
	var scale *graph.Value
	if st.opts.ComputeDType == graph.Float16 {
		// Dynamic loss scaling: the backward differentiates loss·s, so the
		// float16 gradients of the model's activations stay above float16's
		// smallest numbers; the adapter gradients are divided by s again.
		// The runtime picks s (a GradScaler: halved on overflow, grown
		// after clean steps).
		if st.opts.StepsPerRun > 1 {
			return fmt.Errorf("--compute-dtype fp16 (dynamic loss scaling) and --steps-per-run > 1 do not combine yet")
		}
		scale = m.Graph.AddInput("loss_scale", &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}})
		st.inf.Set(scale, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
		st.role(scale, trainio.RoleLossScale, "")
		sb := opb.New(m, "loss_scale", "loss_scale", st.inf)
		target = sb.Mul(st.loss, scale)
		if err := sb.Err(); err != nil {
			return err
		}
	}
	fwd := make(map[*graph.Node]bool, len(m.Graph.Nodes))
	for _, n := range m.Graph.Nodes {
		fwd[n] = true
	}
	grads, err := autodiff.GradientsWith(m, target, st.params, autodiff.Options{NoSiLURule: !st.enabled("silu-rule"), NoCastRowSums: !st.enabled("cast-row-sums"),
		// The CUDA provider's GEMMs read a transposed operand in place: there
		// the form would only add two Transposes (not measured on a GPU).
		NoNarrowWeightGrads: !st.enabled("narrow-weight-grads") || st.opts.Target == "cuda"})
	if err != nil {
		return err
	}
	if slices.Contains(st.opts.Recompute, "attention") {
		k, err := st.recomputeAttention(m, fwd)
		if err != nil {
			return err
		}
		st.logf("autodiff: the backward recomputes %d attention probabilities (recompute.go)", k)
		if k, err = st.recomputeExpansions(m, fwd); err != nil {
			return err
		}
		if k > 0 {
			st.logf("autodiff: the backward recomputes %d broadcast copies (grouped-query keys and values, recomputekv.go)", k)
		}
	}
	if slices.Contains(st.opts.Recompute, "loss") {
		k, err := st.recomputeLoss(m, fwd)
		if err != nil {
			return err
		}
		st.logf("autodiff: the backward recomputes the log-probabilities of %d chunks of the loss (losschunk.go)", k)
	}
	if slices.Contains(st.opts.Recompute, "activations") {
		k, err := st.recomputeActivations(m, fwd)
		if err != nil {
			return err
		}
		st.logf("autodiff: the backward recomputes %d activations (recompute.go)", k)
	}
	if scale != nil {
		ub := opb.New(m, "loss_scale/unscale", "loss_scale/unscale", st.inf)
		inv := ub.Reciprocal(scale)
		for i, g := range grads {
			if g != nil {
				grads[i] = ub.Mul(g, inv)
				st.inf.Set(grads[i], st.inf.Info(st.params[i]))
			}
		}
		if err := ub.Err(); err != nil {
			return err
		}
	}
	gc := opb.New(m, "grad/zero", "grad/zero", st.inf)
	for i, g := range grads {
		if g == nil {
			p := st.params[i]
			st.logf("note: the loss does not depend on %q; its gradient is zero", p.Name)
			zero := graph.NewTensor("", graph.Float, []int64{1}, make([]byte, 4))
			grads[i] = gc.Op("ConstantOfShape", ops(gc.Shape(p)), graph.AttrT("value", zero))
		}
		st.inf.Set(grads[i], st.inf.Info(st.params[i]))
	}
	st.grads = grads
	if st.opts.EmitGrads {
		for i, g := range grads {
			st.gradOutput(g, st.params[i])
			st.emitted = append(st.emitted, g)
		}
	}
	return nil
}

// gradOutput makes g, the gradient of param p, an output of role grad
// typed like p.
func (st *Compiler) gradOutput(g, p *graph.Value) {
	tt := *p.Type
	g.Type = &tt
	st.role(g, trainio.RoleGrad, "")
}

func (st *Compiler) Optimizer(m *graph.Model) error {
	o := st.opts
	if len(st.grads) == 0 {
		return fmt.Errorf("no gradients (pass autodiff or reduced-grads must run first)")
	}
	g := m.Graph
	b := opb.New(m, "optim", "optim", st.inf)
	scalarInput := func(name, role string) *graph.Value {
		v := g.AddInput(name, &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}})
		st.inf.Set(v, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
		st.role(v, role, "")
		return v
	}
	like := st.loss // float32 constants
	if like == nil {
		like = st.grads[0] // the optimizer graph of a split step has no loss
	}
	k := func(x float64) *graph.Value { return b.K(x, like) }
	lr := scalarInput("lr", trainio.RoleLR)
	step := scalarInput("step", trainio.RoleStep)

	// sumOver is Σ f(v) over vs, each f(v) a scalar ReduceSum.
	sumOver := func(vs []*graph.Value, f func(v *graph.Value) *graph.Value) *graph.Value {
		parts := make([]*graph.Value, len(vs))
		for i, v := range vs {
			parts[i] = b.ReduceSum(f(v), nil, false)
		}
		if len(parts) == 1 {
			return parts[0]
		}
		return b.Sum(parts...)
	}

	// The update runs on all adapter tensors at once: params and
	// gradients are flattened and concatenated into one vector, each
	// optimizer moment is one state vector, and the updated vector is
	// split back into the params' shapes. The arithmetic is the same
	// element by element (so are the values), in one chain of kernels
	// instead of one per tensor.
	parts := make([]string, len(st.params))
	sizes := make([]int64, len(st.params))
	shapes := make([][]int64, len(st.params))
	for i, p := range st.params {
		parts[i] = p.Name
		for _, d := range p.Type.Shape {
			if !d.Known() {
				return fmt.Errorf("param %q has a symbolic dim %q", p.Name, d.Param)
			}
			shapes[i] = append(shapes[i], d.Value)
		}
		n, err := graph.NumElements(shapes[i])
		if err != nil {
			return fmt.Errorf("param %q: %w", p.Name, err)
		}
		sizes[i] = n
	}
	total := int64(0)
	for _, n := range sizes {
		total += n
	}
	flat := func(vs []*graph.Value) *graph.Value {
		xs := make([]*graph.Value, len(vs))
		for i, v := range vs {
			xs[i] = b.Reshape(v, b.Ints(-1))
		}
		if len(xs) == 1 {
			return xs[0]
		}
		return b.Concat(0, xs...)
	}
	vec := &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{{Value: total}}}
	state := func(name string) *graph.Value {
		v := g.AddInput(name, vec)
		st.inf.Set(v, infer.Info{DType: graph.Float, Rank: 1, Dims: []graph.Dim{{Value: total}}})
		st.role(v, trainio.RoleState, "")
		e := st.roles[v]
		e.Parts = parts
		st.roles[v] = e
		return v
	}
	var updated []*graph.Value // the updated vectors, for the finite flag
	output := func(v *graph.Value, of *graph.Value, role string) error {
		if err := v.Rename(g.UniqueName(of.Name + ".new")); err != nil {
			return err
		}
		tt := *of.Type
		v.Type = &tt
		e := st.roles[of]
		st.role(v, role, of.Name)
		if e.Parts != nil {
			ne := st.roles[v]
			ne.Parts = e.Parts
			st.roles[v] = ne
		}
		st.outputs = append(st.outputs, v)
		if role == trainio.RoleUpdatedState {
			updated = append(updated, v)
		}
		return nil
	}
	// unflat splits the updated vector into the params' shapes.
	unflat := func(pNew *graph.Value) error {
		updated = append(updated, pNew)
		pieces := []*graph.Value{pNew}
		if len(st.params) > 1 {
			pieces = b.Split(pNew, 0, sizes...)
		}
		for i, p := range st.params {
			if err := output(b.Reshape(pieces[i], b.Ints(shapes[i]...)), p, trainio.RoleUpdatedParam); err != nil {
				return err
			}
		}
		return nil
	}
	P, G := flat(st.params), flat(st.grads)
	// The global gradient norm (before clipping) and the clipping, on the
	// flat vector: one product and one reduction instead of one per
	// adapter tensor.
	norm := b.Named("Sqrt", "grad_norm", ops(b.ReduceSum(b.Mul(G, G), nil, false)))
	norm.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.role(norm, trainio.RoleGradNorm, "")
	if st.loss != nil {
		st.outputs = append(st.outputs, st.loss)
	}
	st.outputs = append(st.outputs, norm)
	st.outputs = append(st.outputs, st.emitted...)
	if o.ClipNorm > 0 {
		G = b.Mul(G, b.Min(b.Div(k(o.ClipNorm), b.Add(norm, k(1e-6))), k(1)))
	}
	switch o.Optimizer {
	case "adamw":
		// Bias corrections.
		bc1 := b.Sub(k(1), b.Pow(k(o.Beta1), step))
		bc2 := b.Sub(k(1), b.Pow(k(o.Beta2), step))
		stepSize := b.Div(lr, bc1)
		bc2Sqrt := b.Sqrt(bc2)
		decay := b.Sub(k(1), b.Mul(lr, k(o.WeightDecay)))
		mIn, vIn := state("adam_m"), state("adam_v")
		pd := P
		if o.WeightDecay != 0 {
			pd = b.Mul(P, decay)
		}
		mNew := b.Add(mIn, b.Mul(b.Sub(G, mIn), k(1-o.Beta1)))
		vNew := b.Add(b.Mul(vIn, k(o.Beta2)), b.Mul(b.Mul(G, G), k(1-o.Beta2)))
		denom := b.Add(b.Div(b.Sqrt(vNew), bc2Sqrt), k(o.Eps))
		if err := unflat(b.Sub(pd, b.Mul(b.Div(mNew, denom), stepSize))); err != nil {
			return err
		}
		if err := output(mNew, mIn, trainio.RoleUpdatedState); err != nil {
			return err
		}
		if err := output(vNew, vIn, trainio.RoleUpdatedState); err != nil {
			return err
		}
	case "sgd":
		d := G
		if o.WeightDecay != 0 {
			d = b.Add(d, b.Mul(P, k(o.WeightDecay)))
		}
		if o.Momentum != 0 {
			buf := state("momentum")
			d = b.Add(b.Mul(buf, k(o.Momentum)), d)
			if err := output(d, buf, trainio.RoleUpdatedState); err != nil {
				return err
			}
		}
		if err := unflat(b.Sub(P, b.Mul(d, lr))); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown optimizer %q (want adamw or sgd)", o.Optimizer)
	}
	// The finite flag: x·0 is 0 for a finite x and NaN for ±Inf or NaN,
	// so the sum over every updated vector is NaN exactly when one value
	// is not finite (a plain sum could overflow on finite values). Read
	// with the loss, it lets the runtime drop a step that would write a
	// non-finite adapter, with the state still on the device.
	z := sumOver(updated, func(v *graph.Value) *graph.Value { return b.Mul(v, k(0)) })
	flag := b.Named("Cast", "updates_finite", ops(b.Not(b.Op("IsNaN", ops(z)))), graph.AttrI("to", int64(graph.Float)))
	flag.Type = &graph.TensorType{DType: graph.Float, Shape: []graph.Dim{}}
	st.inf.Set(flag, infer.Info{DType: graph.Float, Rank: 0, Dims: []graph.Dim{}})
	st.role(flag, trainio.RoleFinite, "")
	st.outputs = append(st.outputs, flag)
	return b.Err()
}
