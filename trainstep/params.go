// Package trainstep is the training compiler: passes that turn an injected
// model into one training step — the adapter as inputs (params), the loss,
// reverse-mode gradients for the adapter only (autodiff, through package
// autodiff), clipping and the AdamW/SGD update (optimizer), pruning to what
// the step outputs, and K steps per run (unroll) — plus the IO description
// train.json records. Each pass is a method of Compiler; package rewrite
// lists them and checks their order.
package trainstep

// Pass "params".
//
// Pre:  the model has LoRA branches (inject ran).
// Post: every branch's lora_A and lora_B is a graph input of the main
//       graph (initializers are turned into inputs, keeping name, dtype and
//       shape); c.Params lists them in adapter order (by target name, A
//       before B) and c.IO describes them with role "param".

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/branch"
	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/trainio"
)

// Options are export-train's settings.
type Options struct {
	Loss        string // "lm", "ce" or "mse"
	Logits      string // the model output the loss reads
	Labels      string // name of the labels input to add
	IgnoreIndex int64  // label value excluded from lm/ce losses

	Optimizer   string // "adamw" or "sgd"
	WeightDecay float64
	Beta1       float64
	Beta2       float64
	Eps         float64
	Momentum    float64
	ClipNorm    float64 // 0 disables clipping

	// EmitGrads adds every adapter gradient (before clipping) to the
	// training graph's outputs as "<param>.grad", role "grad", for
	// inspection and tests.
	EmitGrads bool

	// Sums compiles the gradient half of a data-parallel step (split.go):
	// pass loss outputs the loss's sum and count instead of its mean, and
	// autodiff differentiates the sum.
	Sums bool

	// StepsPerRun K > 1 makes pass "unroll" compile K steps into one run.
	StepsPerRun int

	// Static gives symbolic input dims their sizes (e.g. batch=8,
	// seq=512) for pass "specialize".
	Static map[string]int64

	// Target is the ONNX Runtime execution provider the step is compiled
	// for: "cuda" lets pass "fuse-cuda" use kernels only the CUDA
	// provider has; "" keeps the graph runnable by any provider.
	Target string

	// Recompute names forward values the backward recomputes instead of
	// keeping them ("attention": the attention probabilities,
	// recompute.go).
	Recompute []string

	// ComputeDType is the type the forward's matrix products run in
	// (pass autocast): graph.Float16 or graph.BFloat16 autocast a float32
	// base; Undefined or graph.Float keep the base's own types.
	ComputeDType graph.DataType

	// Disable names rewrites to leave out (Rewrites lists them): for
	// bisecting a numerical difference or a placement problem to one
	// rewrite, as ONNX Runtime's disable_specified_optimizers does for its
	// own.
	Disable []string
}

// Rewrites are the optional rewrites of passes canonicalize, autodiff and
// fuse-cuda that Options.Disable may name, with what each does.
func Rewrites() map[string]string {
	return map[string]string{
		"rms-norm":            "canonicalize: RMS normalization as SimplifiedLayerNormalization",
		"product-scales":      "canonicalize: MatMul(a·c1, b·c2) scales one operand",
		"attention-guard":     "canonicalize: attention's NaN guard on the output, not the probabilities",
		"branch-scales":       "canonicalize: LoRA scales onto lora_B (dropped where 1)",
		"lora-concat":         "canonicalize: LoRA branches reading one input share one x·[A1|A2|...] product",
		"silu-rule":           "autodiff: x·sigmoid(x) differentiated as one function",
		"narrow-weight-grads": "autodiff: a narrow matrix's gradient (a LoRA A's, [in, rank]) as (gyᵀ·a)ᵀ, which ONNX Runtime's CPU GEMM computes faster than aᵀ·gy (not with --provider cuda)",
		"cast-row-sums":       "autodiff: the softmax gradient's row sums Σ go·o from the attention output also through autocast's cast of the probabilities (float32 sums, as FlashAttention's backward)",
		"softmax-bf16":        "autocast: in bf16 the attention's Softmax in bf16 (float32 accumulation inside the kernel; left out: in float32 as softmax-f32 says)",
		"softmax-f32":         "autocast: the attention's Softmax in float32 (left out: in the compute dtype, float32 accumulation inside the kernel)",
		"bias-softmax":        "fuse-cuda: Softmax(x + mask) as com.microsoft BiasSoftmax",
		"row-sub-fold":        "fuse-cuda: (G·Vᵀ) − s folded into one GEMM",
		"nbits-dequant":       "fuse-cuda: a forward MatMulNBits over many rows as its weight dequantized in the step and one GEMM",
		"expand-broadcasts":   "fuse-cuda: a small operand several large elementwise nodes broadcast (the mask, RoPE's cos and sin) expanded once a step",
		"scale-past-matmul":   "fuse-cuda: a scalar scale read only by smaller products (the attention's 1/√d on dS) scales the products",
		"softmax-cast":        "fuse-cuda: a float32 Softmax between autocast's casts, read only by P·V (the forward's, with --recompute attention), in the compute dtype (the CUDA kernel accumulates in float32)",
	}
}

// enabled reports whether rewrite name is not disabled.
func (st *Compiler) enabled(name string) bool { return !slices.Contains(st.opts.Disable, name) }

// DefaultOptions mirrors PyTorch's AdamW defaults and Hugging Face's
// ignore index.
func DefaultOptions() Options {
	return Options{Loss: "lm", IgnoreIndex: -100, Optimizer: "adamw", WeightDecay: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8}
}

// IOEntry is one input or output of a compiled graph (train.json).
type IOEntry = trainio.Entry

// Compiler compiles a training step, one pass (method) at a time; its
// fields are what the passes hand each other.
type Compiler struct {
	opts Options
	logf func(format string, args ...any)
	// IO describes the compiled graph's inputs and outputs after Prune
	// (and Unroll).
	IO struct{ Inputs, Outputs []trainio.Entry }

	params  []*graph.Value
	loss    *graph.Value // what autodiff differentiates: the mean, or with Sums the sum
	count   *graph.Value // with Sums: the int64 number of terms loss sums
	grads   []*graph.Value
	outputs []*graph.Value
	emitted []*graph.Value // gradients output with EmitGrads
	roles   map[*graph.Value]IOEntry
	inf     *infer.Inferer
	// lossChunks are the chunks of a chunked loss (--recompute loss),
	// whose log-probabilities the backward recomputes (losschunk.go).
	lossChunks []lossChunk
}

// New makes a compiler for one graph; logf receives notes (nil: none).
func New(o Options, logf func(format string, args ...any)) *Compiler {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &Compiler{opts: o, logf: logf, roles: map[*graph.Value]IOEntry{}, inf: infer.New()}
}

// shapeOf describes a value's shape for train.json.
func shapeOf(t *graph.TensorType) []trainio.Dim {
	if t == nil || t.Shape == nil {
		return nil
	}
	out := make([]trainio.Dim, len(t.Shape))
	for i, d := range t.Shape {
		switch {
		case d.Param != "":
			out[i] = trainio.Dim{Name: d.Param}
		case d.Value >= 0:
			out[i] = trainio.Dim{Size: d.Value}
		default:
			out[i] = trainio.Dim{Name: "?"}
		}
	}
	return out
}

func (s *Compiler) role(v *graph.Value, role, replaces string) {
	s.roles[v] = IOEntry{Name: v.Name, DType: v.DType().String(), Shape: shapeOf(v.Type), Role: role, Replaces: replaces}
}

// Params is pass "params".
func (st *Compiler) Params(m *graph.Model) error {
	if err := st.concretize(m); err != nil {
		return err
	}
	g := m.Graph
	branches, err := branch.Find(g)
	if err != nil {
		return err
	}
	if len(branches) == 0 {
		return fmt.Errorf("the model has no LoRA branches: run loracc inject first")
	}
	for _, br := range branches {
		if br.IsGenaiNamed() {
			return branch.ErrDeploymentNames(br)
		}
	}
	// Initializer params become inputs in one pass (PromoteToInputs).
	var promote []*graph.Value
	promoted := map[*graph.Value]bool{}
	for _, br := range branches {
		for _, v := range []*graph.Value{br.A, br.B} {
			if t := v.Const; t != nil && !promoted[v] {
				dims := make([]graph.Dim, len(t.Dims))
				for i, d := range t.Dims {
					dims[i] = graph.Dim{Value: d}
				}
				v.Type = &graph.TensorType{DType: t.DType, Shape: dims}
				promote = append(promote, v)
				promoted[v] = true
			}
		}
	}
	if err := g.PromoteToInputs(promote...); err != nil {
		return err
	}
	for _, br := range branches {
		name := br.Target
		for _, v := range []*graph.Value{br.A, br.B} {
			if !promoted[v] && (!v.IsGraphInput() || v.Graph() != g) {
				return fmt.Errorf("branch %q: %q is neither an initializer nor a graph input", name, v.Name)
			}
			if v.Type.DType != graph.Float {
				// Train an fp32 master copy: the graph takes the param in
				// fp32 and casts it to the branch's type where it is read,
				// so gradients and optimizer state stay fp32.
				master, err := masterCopy(g, v)
				if err != nil {
					return fmt.Errorf("branch %q: %w", name, err)
				}
				v = master
			}
			st.params = append(st.params, v)
			st.role(v, trainio.RoleParam, "")
		}
	}
	return nil
}

// masterCopy replaces a low-precision param input v by an fp32 input of
// the same name and shape followed by a Cast to v's type.
func masterCopy(g *graph.Graph, v *graph.Value) (*graph.Value, error) {
	name, low := v.Name, v.Type.DType
	if err := v.Rename(g.UniqueName(name + ".low")); err != nil {
		return nil, err
	}
	master := g.AddInput(name, &graph.TensorType{DType: graph.Float, Shape: v.Type.Shape})
	b := &graph.Builder{G: g, Prefix: "params"}
	cast := b.Op("Cast", name+".as_"+low.String(), []*graph.Value{master}, graph.AttrI("to", int64(low)))
	v.ReplaceAllUsesWith(cast)
	if err := g.RemoveInput(v); err != nil {
		return nil, err
	}
	return master, nil
}

// ops lists values, for op inputs.
func ops(vs ...*graph.Value) []*graph.Value { return vs }
