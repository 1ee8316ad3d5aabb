package trainstep

// Pass "autocast": --compute-dtype fp16|bf16 for a float32 base.
//
// The forward runs as the usual PEFT recipe runs a model loaded in bf16
// (model.to(dtype) with float32 adapter weights): the frozen weights are
// stored in the compute dtype (half the weight memory) and the
// activations flow in it, with the few ops whose range or accumulation
// need it in float32, as Hugging Face's models write them (softmax in
// float32 then cast back; normalization statistics in float32). In the
// main graph after canonicalize, each float value is strong (it carries
// data) or weak (computed from constants only: masks, scales, fills):
//
//   - frozen weights (float constants of rank ≥ 2: projections, embedding
//     tables, rotary caches) are stored in the compute dtype and count as
//     low data; other constants read by a low op are converted once
//     (values beyond the dtype's largest finite one clamped to it, as
//     finfo.min masks are); weak computed values are cast (clipped first
//     for fp16);
//   - normalizations (LayerNormalization, SimplifiedLayerNormalization
//     and the Skip forms) run in the compute dtype: their stash_type keeps
//     the statistics in float32;
//   - Softmax, LogSoftmax, reductions, Exp, Log, Pow, Sqrt, Reciprocal
//     and CumSum run in float32: inputs cast up, outputs cast back down
//     when a strong input was low;
//   - any other op runs low when one strong float input is low (so a
//     float32 value meeting the model's stream is cast down, as Hugging
//     Face casts the rotary cos/sin to the activations' dtype), in
//     float32 when its strong inputs are float32 (explicit upcasts such
//     as position arithmetic stay float32), and is left alone when all
//     its float inputs are weak.
//
// The adapter (float32 master params, inputs of the step), the loss (it
// casts the logits up, loss.go), the gradients and AdamW state stay
// float32: the casts differentiate as casts.
//
// Pre:  params and canonicalize ran; no control flow in the main graph.
// Post: as above; a no-op for fp32.

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
)

// ComputeDType parses --compute-dtype: fp32 (or "") keeps the base's own
// types, fp16 and bf16 autocast a float32 base.
func ComputeDType(s string) (graph.DataType, error) {
	switch s {
	case "", "fp32", "float32":
		return graph.Float, nil
	case "fp16", "float16":
		return graph.Float16, nil
	case "bf16", "bfloat16":
		return graph.BFloat16, nil
	}
	return graph.Undefined, fmt.Errorf("compute dtype %q: want fp32, fp16 or bf16", s)
}

// Classes of ops for autocast.
const (
	acFollow = iota // runs in the type its strong inputs bring
	acLow           // runs in the compute dtype
	acF32           // runs in float32, its output cast back down
)

func autocastClass(n *graph.Node, softmaxF32 bool) int {
	if n.Domain != "" && n.Domain != "com.microsoft" {
		return acFollow
	}
	if !softmaxF32 && n.Op == "Softmax" {
		// Its CUDA kernels accumulate in float32 for 16-bit data; the
		// output is rounded once, as scaled-dot-product attention does,
		// and fuse-cuda can make it BiasSoftmax (float16).
		return acLow
	}
	switch n.Op {
	case "MatMul", "Gemm", "MatMulNBits", "FusedMatMul",
		"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization":
		return acLow
	case "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp",
		"Exp", "Log", "Pow", "Sqrt", "Reciprocal", "CumSum":
		return acF32
	}
	return acFollow
}

// Autocast is pass "autocast".
func (st *Compiler) Autocast(m *graph.Model) error {
	low := st.opts.ComputeDType
	if low == graph.Undefined || low == graph.Float {
		return nil
	}
	g := m.Graph
	if err := g.SortTopo(); err != nil {
		return err
	}
	a := &autocaster{g: g, low: low, inf: st.inf, b: &graph.Builder{G: g, Prefix: "autocast"}, softmaxF32: st.softmaxF32(low),
		typ: map[*graph.Value]graph.DataType{}, weak: map[*graph.Value]bool{}, casts: map[castKey]*graph.Value{}, consts: map[castKey]*graph.Value{}}
	nodes := append([]*graph.Node(nil), g.Nodes...)
	for _, n := range nodes {
		if len(n.Subgraphs()) > 0 {
			return fmt.Errorf("node %q (%s): --compute-dtype does not handle control flow yet; train in fp32", n.Name, n.Op)
		}
		if err := a.node(n); err != nil {
			return fmt.Errorf("node %q (%s): %w", n.Name, n.Op, err)
		}
	}
	// Declared types follow the values; the inferer starts over.
	for v, dt := range a.typ {
		if v.Type != nil && v.Type.DType != dt {
			v.Type = retyped(v.Type, dt)
		}
	}
	st.inf = infer.New()
	st.logf("autocast: %d weights stored in %s, %d casts", a.weights, low, a.castCount)
	return g.SortTopo()
}

type castKey struct {
	v  *graph.Value
	dt graph.DataType
}

type autocaster struct {
	g    *graph.Graph
	low  graph.DataType
	inf  *infer.Inferer
	b    *graph.Builder
	typ  map[*graph.Value]graph.DataType // float values whose type the pass decided
	weak map[*graph.Value]bool           // float values computed from constants only
	// softmaxF32 runs Softmax in float32, else in the compute dtype
	// (Compiler.softmaxF32).
	softmaxF32 bool
	casts      map[castKey]*graph.Value // one Cast per value and type
	consts     map[castKey]*graph.Value // one converted copy per constant and type
	// counts for the log line
	weights, castCount int
}

// dtype is v's float type as the pass sees it (Undefined for non-float).
func (a *autocaster) dtype(v *graph.Value) graph.DataType {
	if dt, ok := a.typ[v]; ok {
		return dt
	}
	dt := a.inf.DType(v)
	if dt == graph.Float || dt == graph.Float16 || dt == graph.BFloat16 || dt == graph.Double {
		return dt
	}
	return graph.Undefined
}

// isWeight says whether v is a frozen weight: a float constant of rank ≥ 2
// (a projection, an embedding table, a rotary cache), which the pass
// stores in the compute dtype whatever reads it.
func isWeight(v *graph.Value) bool {
	t := graph.ConstTensor(v)
	return t != nil && len(t.Dims) >= 2 && t.DType == graph.Float
}

// isWeak says whether v is computed from constants only.
func (a *autocaster) isWeak(v *graph.Value) bool { return graph.ConstTensor(v) != nil || a.weak[v] }

func (a *autocaster) node(n *graph.Node) error {
	if n.Op == "Cast" {
		if to := graph.DataType(n.AttrInt("to", 0)); to == graph.Float || to == a.low {
			a.typ[n.Output(0)] = to // an explicit cast keeps its type
			a.weak[n.Output(0)] = a.dtype(n.Input(0)) != graph.Undefined && a.isWeak(n.Input(0))
		}
		return nil
	}
	if n.Op == "Shape" || n.Op == "Size" {
		return nil // read no values
	}
	var floats []int // input slots holding float values
	strongF32, strongLow := false, false
	for i, in := range n.Inputs() {
		dt := graph.Undefined
		if in != nil {
			dt = a.dtype(in)
		}
		if dt != graph.Float && dt != a.low {
			continue
		}
		floats = append(floats, i)
		if isWeight(in) {
			strongLow = true // a frozen weight: stored in the compute dtype
		} else if !a.isWeak(in) {
			strongF32 = strongF32 || dt == graph.Float
			strongLow = strongLow || dt == a.low
		}
	}
	if len(floats) == 0 {
		// Integer and shape work; a float made from none (ConstantOfShape's
		// fill, a Cast-free Range) is a constant-like value.
		for _, o := range n.Outputs() {
			if o != nil && a.inf.DType(o) == graph.Float {
				a.weak[o] = true
			}
		}
		return nil
	}
	class := autocastClass(n, a.softmaxF32)
	var want graph.DataType
	switch {
	case class == acLow:
		want = a.low
	case class == acF32:
		want = graph.Float
	case strongLow:
		want = a.low
	case strongF32:
		want = graph.Float
	default:
		// Constants only (a mask, a scale): computed in float32 as they
		// were; whoever reads the result converts it.
		for _, o := range n.Outputs() {
			if o != nil && a.dtype(o) == graph.Float {
				a.weak[o] = true
			}
		}
		return nil
	}
	for _, i := range floats {
		in := n.Input(i)
		if a.dtype(in) == want {
			continue
		}
		v, err := a.as(in, want)
		if err != nil {
			return err
		}
		n.SetInput(i, v)
	}
	for _, o := range n.Outputs() {
		if o == nil {
			continue
		}
		// Outputs that were float32 take the op's type; others (indices,
		// masks, statistics) keep theirs.
		if dt := a.inf.DType(o); dt != graph.Float && dt != graph.Undefined {
			continue
		}
		a.typ[o] = want
		if class == acF32 && strongLow {
			a.castBack(o)
		}
	}
	return nil
}

// castBack makes the readers of o, a float32 result of low data, read it
// cast down to the compute dtype (Hugging Face's softmax(..., float32)
// .to(dtype)); graph outputs keep o.
func (a *autocaster) castBack(o *graph.Value) {
	uses := o.Uses()
	if len(uses) == 0 {
		return
	}
	c := a.b.Op("Cast", o.Name+"."+a.low.String(), []*graph.Value{o}, graph.AttrI("to", int64(a.low)))
	a.typ[c] = a.low
	a.castCount++
	for _, u := range uses {
		u.Node.SetInput(u.Index, c)
	}
}

// as is v in type dt: a converted copy of a constant (stored once per
// type), else one Cast per value.
func (a *autocaster) as(v *graph.Value, dt graph.DataType) (*graph.Value, error) {
	key := castKey{v, dt}
	if t := graph.ConstTensor(v); t != nil {
		if c, ok := a.consts[key]; ok {
			return c, nil
		}
		ct, err := converted(t, v.Name+"."+dt.String(), dt)
		if err != nil {
			return nil, err
		}
		c := a.g.Root().AddInitializer(ct)
		a.consts[key] = c
		a.typ[c] = dt
		if len(t.Dims) >= 2 {
			a.weights++
		}
		return c, nil
	}
	if c, ok := a.casts[key]; ok {
		return c, nil
	}
	src := v
	if dt == graph.Float16 && a.weak[v] && a.dtype(v) == graph.Float {
		// A fill such as finfo(float32).min would become −inf.
		lo, err := a.b.Scalar(v.Name+".fp16_min", graph.Float, -65504)
		if err != nil {
			return nil, err
		}
		hi, err := a.b.Scalar(v.Name+".fp16_max", graph.Float, 65504)
		if err != nil {
			return nil, err
		}
		src = a.b.Op("Clip", v.Name+".fp16_range", []*graph.Value{v, lo, hi})
	}
	c := a.b.Op("Cast", v.Name+"."+dt.String(), []*graph.Value{src}, graph.AttrI("to", int64(dt)))
	a.casts[key] = c
	a.typ[c] = dt
	a.castCount++
	return c, nil
}

// converted is t in type dt, values beyond dt's largest finite value
// clamped to it: at once for a tensor in memory, else when the model is
// saved, so an external weight is read once and never held whole.
func converted(t *graph.Tensor, name string, dt graph.DataType) (*graph.Tensor, error) {
	conv := func() ([]byte, error) {
		if t.DType == graph.Float && (dt == graph.BFloat16 || dt == graph.Float16) {
			raw, err := t.Bytes()
			if err != nil {
				return nil, err
			}
			return narrowFloat32(raw, dt), nil
		}
		vals, err := t.Floats()
		if err != nil {
			return nil, err
		}
		limit := 65504.0
		if dt == graph.BFloat16 {
			limit = math.MaxFloat32 // bfloat16 has float32's range
		}
		for i, x := range vals {
			vals[i] = float32(math.Max(-limit, math.Min(limit, float64(x))))
		}
		return graph.EncodeFloats(dt, vals)
	}
	out := graph.NewTensor(name, dt, t.Dims, nil)
	if t.InMemory() {
		raw, err := conv()
		if err != nil {
			return nil, err
		}
		out.SetBytes(raw)
		return out, nil
	}
	out.SetStream(func(w io.Writer) error {
		raw, err := conv()
		if err == nil {
			_, err = w.Write(raw)
		}
		return err
	})
	return out, nil
}

// narrowFloat32 converts little-endian float32 data to dt (float16 or
// bfloat16), clamped to dt's largest finite value, on all cores: a 7B
// model's weights are 6.7G values, converted once per compiled graph.
func narrowFloat32(raw []byte, dt graph.DataType) []byte {
	n := len(raw) / 4
	out := make([]byte, 2*n)
	limit := float32(65504)
	conv := graph.Float32ToFloat16
	if dt == graph.BFloat16 {
		limit, conv = math.MaxFloat32, graph.Float32ToBFloat16
	}
	chunk := n // small tensors in one goroutine
	if n >= 1<<16 {
		chunk = (n + runtime.NumCPU() - 1) / runtime.NumCPU()
	}
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += chunk {
		hi := min(lo+chunk, n)
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				x := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
				if x > limit {
					x = limit
				} else if x < -limit {
					x = -limit
				}
				binary.LittleEndian.PutUint16(out[2*i:], conv(x))
			}
		})
	}
	wg.Wait()
	return out
}

// softmaxF32 says whether autocast to low runs Softmax in float32
// (rewrite "softmax-f32") rather than in low. In bfloat16 the softmax runs
// in bfloat16 unless "softmax-bf16" is left out: its CUDA kernel
// accumulates in float32 and rounds the probabilities once, as
// FlashAttention's do before the P·V product, and the backward's dS then
// stays bfloat16 too. On the H200 that made the 7B-shaped Llama's step
// 6 % faster and 1.2 GiB smaller, with the 1B Llama's loss curve within
// 2.3e-4 of PyTorch's bf16 autocast over 50 steps, where the float32
// softmax's was within 2.1e-4 (docs/gpu-benchmarks.md §3j). float16
// keeps the float32 softmax: its range is the concern there, not
// precision.
func (st *Compiler) softmaxF32(low graph.DataType) bool {
	if low == graph.BFloat16 && st.enabled("softmax-bf16") {
		return false
	}
	return st.enabled("softmax-f32")
}
