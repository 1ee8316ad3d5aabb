// Package lora is LoRA graph surgery: finding the layers an adapter can
// target, inserting branches beside them (inject), removing them again
// (strip) and folding an adapter into the base weights (fuse), for float
// and quantized weights, and matching a PEFT adapter's layer names to a
// model's targets. What a branch is (names, layout) is package branch.
package lora

import (
	"github.com/loracc/loracc/adapter"
)

// Options carries what the surgery passes read and record.
type Options struct {
	// Selector picks targets (inject, inspect).
	Selector Selector
	// Config gives rank, alpha and patterns for new adapters (inject).
	Config adapter.Config
	// Init chooses how new adapters start (inject).
	Init Init
	// Adapter is the adapter a pass reads (fuse, inject with given
	// values) or writes (inject).
	Adapter *adapter.Adapter
	// AllowLargeRank lets a new adapter be up to LargeRankFactor times the
	// weights it adapts (CheckRanks) instead of at most their size.
	AllowLargeRank bool
	// AdapterInputs makes A and B graph inputs instead of initializers.
	AdapterInputs bool
	// KeepPacked leaves packed q/k/v projections whole (one qkv_proj
	// target, as PEFT trains Phi-3's) instead of pass unpack's split.
	KeepPacked bool
	// GenaiNames names adapter inputs as onnxruntime-genai's model builder
	// and Olive do (branch.GenaiAName), with the scale folded into B and
	// the graph's scale 1, so their adapters and the Adapters API feed
	// them (inject with AdapterInputs).
	GenaiNames bool
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

	// Injected lists the targets inject rewrote, in adapter order.
	Injected []*Target
}

func (o *Options) logf(format string, args ...any) {
	if o.Logf != nil {
		o.Logf(format, args...)
	}
}
