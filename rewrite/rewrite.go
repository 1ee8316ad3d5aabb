// Package rewrite is loracc's pass table: the one place that lists the
// graph passes, says why each exists and checks that a requested pipeline
// runs them in an order that works. The passes themselves live in two
// packages: lora (graph surgery: inject, strip, fuse) and trainstep (the
// training compiler: params, loss, autodiff, optimizer, prune, unroll).
package rewrite

import (
	"fmt"
	"slices"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/lora"
	"github.com/loracc/loracc/trainio"
	"github.com/loracc/loracc/trainstep"
)

// Pass is one graph rewrite.
type Pass struct {
	Name string
	// Why says what the pass is for; printed by --dump.
	Why string
	Run func(m *graph.Model, c *Context) error
}

// Context carries a pipeline's options and what passes hand each other.
// One Context may serve several Run calls on the same model; the order
// checks then count the passes earlier calls ran.
type Context struct {
	// Lora configures the surgery passes and receives what inject did.
	Lora lora.Options
	// Train configures the training passes.
	Train trainstep.Options
	// IO describes the compiled graph's inputs and outputs after prune
	// (and unroll).
	IO struct{ Inputs, Outputs []trainio.Entry }

	// Logf receives progress and notes; nil discards them.
	Logf func(format string, args ...any)
	// Dump, when set, is called after each pass with the pass's name.
	Dump func(pass string, m *graph.Model)
	// Verify runs graph.Verify after every pass (tests turn it on).
	Verify bool

	compiler *trainstep.Compiler
	ran      []string
}

// trainer is the training compiler shared by this context's passes.
func (c *Context) trainer() *trainstep.Compiler {
	if c.compiler == nil {
		c.compiler = trainstep.New(c.Train, c.Logf)
	}
	return c.compiler
}

func (c *Context) surgery() *lora.Options {
	if c.Lora.Logf == nil {
		c.Lora.Logf = c.Logf
	}
	return &c.Lora
}

// trainPass adapts a training-compiler step to the table and publishes
// the compiled graph's IO.
func trainPass(step func(*trainstep.Compiler, *graph.Model) error) func(*graph.Model, *Context) error {
	return func(m *graph.Model, c *Context) error {
		t := c.trainer()
		if err := step(t, m); err != nil {
			return err
		}
		c.IO.Inputs, c.IO.Outputs = t.IO.Inputs, t.IO.Outputs
		return nil
	}
}

// Passes returns the pass table, in the order pipelines run them.
func Passes() []Pass {
	return []Pass{
		{Name: "unpack", Why: "split each packed q/k/v projection (onnxruntime-genai's qkv_proj) into q_proj, k_proj and v_proj, so each is a LoRA target as PEFT trains them",
			Run: func(m *graph.Model, c *Context) error { _, err := lora.Unpack(m, c.surgery()); return err }},
		{Name: "inject", Why: "add y += scale·(x·A)·B beside each selected MatMul/Gemm with a constant weight",
			Run: func(m *graph.Model, c *Context) error { return lora.Inject(m, c.surgery()) }},
		{Name: "strip", Why: "remove LoRA branches added by inject, restoring the base graph's names",
			Run: func(m *graph.Model, c *Context) error { return lora.Strip(m, c.surgery()) }},
		{Name: "fuse", Why: "fold W += scale·A·B into the base weights, streaming external data",
			Run: func(m *graph.Model, c *Context) error { return lora.Fuse(m, c.surgery()) }},
		{Name: "repack", Why: "join the projections unpack split, with their fused weights, so the fused model is the base graph",
			Run: func(m *graph.Model, c *Context) error { _, err := lora.Repack(m, c.surgery()); return err }},
		{Name: "canonicalize", Why: "replace op patterns exporters spell out (tanh-GELU) by the standard op, so the forward is one kernel and the backward one rule", Run: trainPass((*trainstep.Compiler).Canonicalize)},
		{Name: "params", Why: "make every branch's lora_A/lora_B a graph input the host feeds", Run: trainPass((*trainstep.Compiler).Params)},
		{Name: "autocast", Why: "--compute-dtype fp16|bf16: matrix products (and their frozen weights) in that dtype, softmax, normalizations and the loss in float32, as PyTorch's autocast", Run: trainPass((*trainstep.Compiler).Autocast)},
		{Name: "loss", Why: "add the scalar training loss (lm, ce or mse) and the labels input", Run: trainPass((*trainstep.Compiler).Loss)},
		{Name: "autodiff", Why: "append reverse-mode gradients of the loss for the adapter tensors only", Run: trainPass((*trainstep.Compiler).Autodiff)},
		{Name: "grads", Why: "output the loss sum, its count and the gradients of the sum: the gradient half of a data-parallel step, whose outputs the ranks all-reduce", Run: trainPass((*trainstep.Compiler).Grads)},
		{Name: "reduced-grads", Why: "take the gradients and the count summed over the ranks as inputs: the optimizer half of a data-parallel step", Run: trainPass((*trainstep.Compiler).ReducedGrads)},
		{Name: "optimizer", Why: "clip the gradients' global norm and apply AdamW or SGD, outputting new params and state", Run: trainPass((*trainstep.Compiler).Optimizer)},
		{Name: "prune", Why: "keep only the outputs training needs and drop every node, constant and input they do not use", Run: trainPass((*trainstep.Compiler).Prune)},
		{Name: "unroll", Why: "run K optimizer steps per graph run, so adapter and optimizer state cross between host and device once per K steps", Run: trainPass((*trainstep.Compiler).Unroll)},
		{Name: "specialize", Why: "fix the input dims and fold the shape arithmetic they determine, so no shape work runs per step", Run: trainPass((*trainstep.Compiler).Specialize)},
		{Name: "legalize", Why: "--compute-dtype bf16: ops ONNX Runtime's CUDA provider has no bfloat16 kernel for run in float32 between casts", Run: trainPass((*trainstep.Compiler).Legalize)},
		{Name: "schedule", Why: "order the nodes so that ONNX Runtime's reverse depth-first walk runs each backward value made from forward values alone next to its use, not at the start of the backward", Run: trainPass((*trainstep.Compiler).Schedule)},
		{Name: "fuse-cuda", Why: "for the CUDA provider: the attention's mask addition into its Softmax (BiasSoftmax) and the softmax gradient's row subtraction into its GEMM", Run: trainPass((*trainstep.Compiler).FuseCUDA)},
	}
}

// orderRule says that pass first must run before pass then when both are
// in a pipeline; with required, then cannot run at all unless first ran
// before it (in this Run or an earlier one on the same Context). first
// may name alternatives, "a|b": a required rule is met by either.
type orderRule struct {
	first, then string
	required    bool
	why         string
}

// passOrder is the one table of ordering constraints, checked by Run.
var passOrder = [...]orderRule{
	{"strip", "fuse", false, "fuse folds the adapter into the base weights and expects no branch in the graph"},
	{"unpack", "inject", false, "inject targets the projections unpack splits out of a packed one"},
	{"unpack", "fuse", false, "fuse folds adapters of q_proj, k_proj and v_proj into the projections unpack splits"},
	{"strip", "repack", false, "repack joins bare projections, not ones carrying a branch"},
	{"fuse", "repack", false, "repack joins the projections fuse changed"},
	{"inject", "params", false, "params turns the branches inject adds into graph inputs"},
	{"params", "loss", true, "the compiled graphs take the adapter as inputs, which params makes"},
	{"canonicalize", "autodiff", false, "autodiff should differentiate the canonical ops, not the patterns they replace"},
	{"canonicalize", "autocast", false, "autocast types the canonical ops (decomposed attention, fused norms)"},
	{"params", "autocast", true, "autocast leaves the adapter params float32 masters, which params makes"},
	{"autocast", "loss", false, "the loss reads the logits autocast types"},
	{"canonicalize", "loss", false, "canonicalize rewrites the model's forward graph, before the loss reads its output"},
	{"params", "autodiff", true, "autodiff differentiates with respect to the params"},
	{"loss", "autodiff", true, "autodiff differentiates the loss"},
	{"autodiff|reduced-grads", "optimizer", true, "the optimizer updates the params with their gradients (or with the ranks' summed gradients, reduced-grads)"},
	{"autodiff", "grads", true, "grads outputs the gradients autodiff adds"},
	{"params", "reduced-grads", true, "reduced-grads adds a gradient input per param"},
	{"grads", "prune", false, "prune keeps what the graph outputs, so the gradient outputs must exist by then"},
	{"loss|reduced-grads", "prune", true, "prune keeps what the loss (and the optimizer's outputs) need; the optimizer half of a split step has no loss"},
	{"optimizer", "prune", false, "prune drops everything the graph's outputs do not need, so the optimizer's outputs must exist by then"},
	{"prune", "unroll", true, "unroll copies the pruned step graph K times"},
	{"optimizer", "unroll", true, "unroll chains the optimizer's updated params and state from step to step"},
	{"prune", "specialize", true, "specialize records the IO of the pruned graph and folds only what its outputs need"},
	{"specialize", "fuse-cuda", true, "fuse-cuda matches patterns by their concrete dims, which specialize fixes"},
	{"fuse-cuda", "legalize", false, "legalize types the ops fuse-cuda writes too"},
	{"prune", "legalize", false, "legalize types the final ops"},
	{"unroll", "legalize", false, "legalize types the ops unroll copies"},
	{"unroll", "specialize", false, "unroll copies the step graph, so it must copy the specialised one, not be specialised after"},
	{"legalize", "schedule", false, "schedule orders the final nodes, legalize's casts among them"},
	{"fuse-cuda", "schedule", false, "schedule orders the nodes fuse-cuda writes too"},
	{"unroll", "schedule", false, "schedule orders the nodes unroll copies"},
	{"prune", "schedule", false, "schedule orders the pruned graph's nodes"},
	{"autodiff", "schedule", false, "schedule orders the backward's nodes"},
}

// checkOrder reports the first ordering constraint the pipeline breaks:
// within names, first must come before then; a required first must have
// run before then, here or in an earlier Run (before).
func checkOrder(before, names []string) error {
	pos := map[string]int{}
	for i, n := range names {
		if _, seen := pos[n]; !seen {
			pos[n] = i
		}
	}
	ranBefore := func(pass string, i int) bool {
		if j, ok := pos[pass]; ok && j < i {
			return true
		}
		return slices.Contains(before, pass)
	}
	for _, r := range passOrder {
		t, hasThen := pos[r.then]
		if !hasThen {
			continue
		}
		firsts := strings.Split(r.first, "|")
		met := false
		for _, first := range firsts {
			if f, hasFirst := pos[first]; hasFirst && f > t {
				return fmt.Errorf("pass %q must run before pass %q: %s", first, r.then, r.why)
			}
			met = met || ranBefore(first, t)
		}
		if r.required && !met {
			alt := ""
			for _, a := range firsts[1:] {
				alt += fmt.Sprintf(" (or pass %q)", a)
			}
			return fmt.Errorf("pass %q needs pass %q before it%s: %s", r.then, firsts[0], alt, r.why)
		}
	}
	return nil
}

// Run applies the named passes in order, after checking the order against
// passOrder. Errors are wrapped as `pass "name": ...`.
func Run(m *graph.Model, c *Context, names ...string) error {
	table := map[string]Pass{}
	for _, p := range Passes() {
		table[p.Name] = p
	}
	for _, name := range names {
		if _, ok := table[name]; !ok {
			return fmt.Errorf("unknown pass %q", name)
		}
	}
	if err := checkOrder(c.ran, names); err != nil {
		return err
	}
	for _, name := range names {
		if err := table[name].Run(m, c); err != nil {
			return fmt.Errorf("pass %q: %w", name, err)
		}
		c.ran = append(c.ran, name)
		if c.Verify {
			if err := m.Graph.Verify(); err != nil {
				return fmt.Errorf("pass %q broke the IR: %w", name, err)
			}
		}
		if c.Dump != nil {
			c.Dump(name, m)
		}
	}
	return nil
}
