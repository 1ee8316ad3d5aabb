// Package rewrite holds loracc's graph passes. Every pass has the same
// signature and lives in its own file; the table below is the one place
// that lists them, in the order pipelines run them, with why each exists.
package rewrite

import (
	"fmt"

	"github.com/loracc/loracc/adapter"
	"github.com/loracc/loracc/graph"
)

// Pass is one graph rewrite.
type Pass struct {
	Name string
	// Why says what the pass is for; printed by --dump.
	Why string
	Run func(m *graph.Model, c *Context) error
}

// Context carries a pipeline's options and what passes hand each other.
type Context struct {
	// Selector picks targets (inject, inspect).
	Selector Selector
	// Config gives rank, alpha and patterns for new adapters (inject).
	Config adapter.Config
	// Init chooses how new adapters start (inject).
	Init Init
	// Adapter is the adapter a pass reads (fuse, inject with given
	// values) or writes (inject).
	Adapter *adapter.Adapter
	// AdapterInputs makes A and B graph inputs instead of initializers.
	AdapterInputs bool
	// BranchFP32 computes the branch of an fp16/bf16 target in float32
	// (x cast up, the delta cast down before the sum) instead of in the
	// base's type.
	BranchFP32 bool
	// Scale, when non-nil, replaces each layer's alpha/r (fuse --scale).
	Scale *float64
	// QuantizedToFloat makes fuse replace a quantized weight by a float
	// one instead of re-quantizing W + s·ΔW on the weight's own grid.
	QuantizedToFloat bool
	// Logf receives progress and notes; nil discards them.
	Logf func(format string, args ...any)
	// Dump, when set, is called after each pass with the pass's name.
	Dump func(pass string, m *graph.Model)
	// Verify runs graph.Verify after every pass (tests turn it on).
	Verify bool

	// Train configures the training passes (params, loss, autodiff,
	// optimizer, prune).
	Train TrainOptions
	// IO describes the compiled graph's inputs and outputs after prune.
	IO struct{ Inputs, Outputs []IOEntry }

	// Injected lists the targets inject rewrote, in adapter order.
	Injected []*Target

	trainState *trainState
}

func (c *Context) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Passes returns the pass table. Order matters where a pipeline runs
// several: strip must precede fuse (fuse folds into the base weights and
// expects no branch), and inject must not see a model that still has
// branches from another adapter (it refuses targets that have one).
// Training: params → loss → autodiff → optimizer → prune; each needs what
// the one before recorded (checked by the passes themselves).
func Passes() []Pass {
	return []Pass{
		{Name: "inject", Why: "add y += scale·(x·A)·B beside each selected MatMul/Gemm with a constant weight", Run: injectPass},
		{Name: "strip", Why: "remove LoRA branches added by inject, restoring the base graph's names", Run: stripPass},
		{Name: "fuse", Why: "fold W += scale·A·B into the base weights, streaming external data", Run: fusePass},
		{Name: "params", Why: "make every branch's lora_A/lora_B a graph input the host feeds", Run: paramsPass},
		{Name: "loss", Why: "add the scalar training loss (lm, ce or mse) and the labels input", Run: lossPass},
		{Name: "autodiff", Why: "append reverse-mode gradients of the loss for the adapter tensors only", Run: autodiffPass},
		{Name: "optimizer", Why: "clip the gradients' global norm and apply AdamW or SGD, outputting new params and state", Run: optimizerPass},
		{Name: "unroll", Why: "run K optimizer steps per graph run, so adapter and optimizer state cross between host and device once per K steps", Run: unrollPass},
		{Name: "prune", Why: "keep only the outputs training needs and drop every node, constant and input they do not use", Run: prunePass},
	}
}

// Run applies the named passes in order. Errors are wrapped as
// `pass "name": ...`.
func Run(m *graph.Model, c *Context, names ...string) error {
	table := map[string]Pass{}
	for _, p := range Passes() {
		table[p.Name] = p
	}
	for _, name := range names {
		p, ok := table[name]
		if !ok {
			return fmt.Errorf("unknown pass %q", name)
		}
		if err := p.Run(m, c); err != nil {
			return fmt.Errorf("pass %q: %w", name, err)
		}
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
