package trainstep

// Pass "fuse-cuda".
//
// Pre:  specialize ran (every dim is concrete); Options.Target is "cuda"
//       (otherwise the pass changes nothing).
// Post: six patterns read and write their [.., T, T] tensors
//       fewer times (softmax-cast is in cudasoftmax.go):
//   bias-softmax — Softmax(x + m) over the last axis, where the sum has
//       no other reader and m broadcasts over x's leading dims (the
//       causal mask), becomes com.microsoft BiasSoftmax(x, m): the node
//       ONNX Runtime's own BiasSoftmaxFusion makes, whose CUDA kernel adds
//       the mask while it normalizes, so x + m is never written;
//   row-sub-fold — (G·Vᵀ) − s with s one value per row ([.., T, 1], the
//       softmax gradient's Σ go·o), computed by one GEMM,
//       [G | −s | 0]·[V | 1 | 0]ᵀ: the subtraction rides in an extra
//       column of the product (zero columns pad the inner size to 16
//       bytes, which cuBLAS's tensor-core kernels need), so the broadcast
//       Sub over [.., T, T] is gone;
//   softmax-cast — autocast's Cast(Softmax(Cast(x, float32)), bfloat16)
//       whose float32 probabilities nothing else reads is one bfloat16
//       (or float16) Softmax;
//   scale-past-matmul — a scalar scale read only by products smaller
//       than it, the attention's 1/√d on dS, scales the products instead
//       (scalefold.go);
//   expand-broadcasts — a small operand several large elementwise nodes
//       broadcast (the mask, RoPE's cos and sin) is expanded once a step
//       so that ORT's plain kernels run them (broadcast.go);
//   nbits-dequant — a forward MatMulNBits over many rows is its weight
//       dequantized while the step runs and one GEMM (nbitsfwd.go).
//
// Why: on a 512-token, 32-head Llama each of those passes over an fp32
// [8, 32, 512, 512] tensor costs ~0.22 ms per layer on an H200 (Nsight
// Compute), about 7 ms of a 109 ms step between the two. Only for CUDA:
// the CPU provider of ONNX Runtime 1.29 has no BiasSoftmax kernel, and on
// the CPU the extra GEMM columns cost what the Sub saves.
//
// Numerics: BiasSoftmax computes softmax(x + m) in float32 as the two
// nodes do. In the fold, s enters the product as a GEMM operand, so under
// TF32 it is rounded to 10 mantissa bits like every other operand of that
// product (the dP GEMM's own inputs already are); the loss curve test
// against PyTorch bounds the effect (docs/gpu-benchmarks.md).

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/infer"
	"github.com/loracc/loracc/internal/opb"
)

// FuseCUDA is pass "fuse-cuda".
func (st *Compiler) FuseCUDA(m *graph.Model) error {
	if st.opts.Target != "cuda" {
		return nil
	}
	for _, rw := range []struct {
		name string
		run  func(*graph.Model, *infer.Inferer) (int, error)
		note string
	}{
		{"bias-softmax", fuseBiasSoftmax, "%d mask additions fused into their Softmax (BiasSoftmax)"},
		{"row-sub-fold", foldRowSubtractions, "%d row-vector subtractions folded into their GEMM"},
		{"softmax-cast", lowerCastSoftmax, "%d float32 softmaxes between casts run in the compute dtype (cudasoftmax.go)"},
		{"scale-past-matmul", scalePastProducts, "%d scalar scales moved past the products that read them (scalefold.go)"},
		{"expand-broadcasts", expandSharedBroadcasts, "%d shared broadcast operands expanded once a step (broadcast.go)"},
		{"nbits-dequant", dequantizedProducts, "%d MatMulNBits products as a dequantized weight and a GEMM (nbitsfwd.go)"},
	} {
		if !st.enabled(rw.name) {
			continue
		}
		k, err := rw.run(m, infer.New())
		if err != nil {
			return err
		}
		if k > 0 {
			st.logf("fuse-cuda: "+rw.note, k)
			if _, err := m.Graph.Prune(); err != nil {
				return err
			}
			if err := m.Graph.SortTopo(); err != nil {
				return err
			}
		}
	}
	return nil
}

// replaceNode makes v stand for n's one output — its readers, name and
// type — and removes n.
func replaceNode(g *graph.Graph, n *graph.Node, v *graph.Value) error {
	out := n.Output(0)
	name, typ := out.Name, out.Type
	out.ReplaceAllUsesWith(v)
	if err := g.RemoveNode(n); err != nil {
		return err
	}
	if err := v.Rename(name); err != nil {
		return err
	}
	v.Type = typ
	return nil
}

// staticDims are v's dims when all are known.
func staticDims(inf *infer.Inferer, v *graph.Value) ([]int64, bool) {
	in := inf.Info(v)
	if in.Dims == nil || len(in.Dims) != in.Rank {
		return nil, false
	}
	out := make([]int64, len(in.Dims))
	for i, d := range in.Dims {
		if !d.Known() {
			return nil, false
		}
		out[i] = d.Value
	}
	return out, true
}

// producerOp is v's producer when it is the default-domain op.
func producerOp(v *graph.Value, op string) *graph.Node {
	p, _ := v.Producer()
	if p == nil || p.Op != op || p.Domain != "" {
		return nil
	}
	return p
}

// lastAxisSoftmax reports whether n normalizes over the last axis of a
// rank-r input: opset 13 and later by axis −1 or r−1 (default −1), before
// by axis r−1 (default 1), where BiasSoftmax's coercion to 2-D is the
// same thing.
func lastAxisSoftmax(n *graph.Node, opset int64, r int) bool {
	def := int64(-1)
	if opset < 13 {
		def = 1
	}
	a := n.AttrInt("axis", def)
	if a < 0 {
		a += int64(r)
	}
	return a == int64(r-1)
}

// biasBroadcast says how bias dims b broadcast to input dims x for
// BiasSoftmax: inner (b = x on a leading run, then ones, then x's last
// dim, as a [B, 1, 1, T] padding mask) or outer (b right-aligned equals
// x's trailing dims after leading ones, as a [1, 1, T, T] causal mask).
// ok is false for any other broadcast.
func biasBroadcast(x, b []int64) (inner, ok bool) {
	if len(b) > len(x) || len(b) == 0 || b[len(b)-1] != x[len(x)-1] {
		return false, false
	}
	if slices.Equal(x, b) {
		return false, true
	}
	// outer: leading ones (or missing dims), then x's trailing dims.
	off := len(x) - len(b)
	i := 0
	for i < len(b) && b[i] == 1 && x[off+i] != 1 {
		i++
	}
	if slices.Equal(b[i:], x[off+i:]) {
		return false, true
	}
	// inner: same rank, x's leading dims, then ones, then the last dim.
	if len(b) != len(x) {
		return false, false
	}
	j := 0
	for j < len(x)-1 && b[j] == x[j] {
		j++
	}
	for k := j; k < len(x)-1; k++ {
		if b[k] != 1 {
			return false, false
		}
	}
	return true, true
}

func fuseBiasSoftmax(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	opset := m.OpsetVersion("")
	count := 0
	for _, sm := range slices.Clone(g.Nodes) {
		if sm.Op != "Softmax" || sm.Domain != "" || sm.Graph() == nil {
			continue
		}
		sum := sm.Input(0)
		add := producerOp(sum, "Add")
		y := sm.Output(0)
		if add == nil || sum.NumUses() != 1 || sum.IsGraphOutput() || y.IsGraphOutput() {
			continue
		}
		dt := inf.DType(sum)
		if dt != graph.Float && dt != graph.Float16 {
			continue
		}
		xd, ok := staticDims(inf, sum)
		if !ok || !lastAxisSoftmax(sm, opset, len(xd)) {
			continue
		}
		var x, bias *graph.Value
		var inner bool
		for i := range 2 {
			a, b := add.Input(i), add.Input(1-i)
			ad, ok1 := staticDims(inf, a)
			bd, ok2 := staticDims(inf, b)
			if !ok1 || !ok2 || !slices.Equal(ad, xd) || inf.DType(a) != dt || inf.DType(b) != dt {
				continue
			}
			if in, ok := biasBroadcast(xd, bd); ok {
				x, bias, inner = a, b, in
				break
			}
			if small, sd := shrinkConst(g, b, bd); small != nil {
				if in, ok := biasBroadcast(xd, sd); ok {
					x, bias, inner = a, small, in
					break
				}
			}
		}
		if x == nil {
			continue
		}
		b := &graph.Builder{G: g, Prefix: "fuse_cuda", Metadata: sm.Metadata}
		fused := b.Op("BiasSoftmax", y.Name+".bias_softmax", []*graph.Value{x, bias},
			graph.AttrI("axis", int64(len(xd)-1)), graph.AttrI("is_inner_broadcast", boolInt(inner)))
		node, _ := fused.Producer()
		node.Domain = "com.microsoft"
		name, typ := y.Name, y.Type
		y.ReplaceAllUsesWith(fused)
		for _, dead := range []*graph.Node{sm, add} {
			if err := g.RemoveNode(dead); err != nil {
				return count, err
			}
		}
		if err := fused.Rename(name); err != nil {
			return count, err
		}
		fused.Type = typ
		count++
	}
	if count > 0 {
		importMicrosoft(m)
	}
	return count, nil
}

// shrinkConst returns constant v (dims d) with every dim but the last
// along which its slices are all equal cut to 1 — the same addend under
// broadcasting — or nil when none is, or v is not a float constant. A
// folded causal mask of a batch without padding is one [T, T] block
// repeated per row of the batch; BiasSoftmax broadcasts [1, 1, T, T] but
// not [B, 1, T, T].
func shrinkConst(g *graph.Graph, v *graph.Value, d []int64) (*graph.Value, []int64) {
	t := graph.ConstTensor(v)
	if t == nil || (t.DType != graph.Float && t.DType != graph.Float16) {
		return nil, nil
	}
	raw, err := t.Bytes()
	if err != nil {
		return nil, nil
	}
	vals, err := graph.DecodeFloats(t.DType, raw)
	if err != nil || int64(len(vals)) != product(d) {
		return nil, nil
	}
	dims := slices.Clone(d)
	cut := false
	for ax := 0; ax < len(dims)-1; ax++ {
		if dims[ax] == 1 {
			continue
		}
		inner := product(dims[ax+1:])
		outer := product(dims[:ax])
		same := true
		for o := int64(0); o < outer && same; o++ {
			base := o * dims[ax] * inner
			for j := int64(1); j < dims[ax] && same; j++ {
				same = slices.Equal(vals[base:base+inner], vals[base+j*inner:base+(j+1)*inner])
			}
		}
		if !same {
			continue
		}
		kept := make([]float32, 0, outer*inner)
		for o := int64(0); o < outer; o++ {
			base := o * dims[ax] * inner
			kept = append(kept, vals[base:base+inner]...)
		}
		vals, dims[ax], cut = kept, 1, true
	}
	if !cut {
		return nil, nil
	}
	nt, err := graph.NewFloatTensor(g.UniqueName(v.Name+".shrunk"), t.DType, dims, vals)
	if err != nil {
		return nil, nil
	}
	return g.AddInitializer(nt), dims
}

func product(d []int64) int64 {
	n := int64(1)
	for _, x := range d {
		n *= x
	}
	return n
}

// importMicrosoft adds the com.microsoft opset import if missing.
func importMicrosoft(m *graph.Model) {
	if m.OpsetVersion("com.microsoft") == 0 {
		m.Opsets = append(m.Opsets, graph.Opset{Domain: "com.microsoft", Version: 1})
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// foldRowSubtractions rewrites Sub(MatMul(G, Transpose(V)), s), with s
// of dims [.., T, 1] and no broadcasting of leading dims anywhere, as
// MatMul([G | −s | 0], Transpose([V | 1 | 0])). Under autocast, the
// bfloat16 product cast to float32 before the Sub: Cast(MatMul([G |
// Cast(−s) | 0], ...)) — s rounded to bfloat16 as an operand, the
// difference rounded once by the GEMM, where before the product was
// rounded and the difference exact: the same order of error (one
// bfloat16 rounding of values of |dP|'s size), and the [.., T, T]
// float32 copy of the product and the Sub's pass over it are gone. With
// the softmax in the compute type (softmax-f32 left out) product, s and
// Sub are all 16-bit: the fold rounds the difference once where the
// product and the Sub rounded twice.
func foldRowSubtractions(m *graph.Model, inf *infer.Inferer) (int, error) {
	g := m.Graph
	b := opb.New(m, "fuse_cuda", "fuse_cuda", inf)
	consts := map[string]*graph.Value{} // shared ones/zeros blocks by dims
	block := func(dt graph.DataType, dims []int64, first float32) *graph.Value {
		key := fmt.Sprint(dt, dims, first)
		if v := consts[key]; v != nil {
			return v
		}
		n := int64(1)
		for _, d := range dims {
			n *= d
		}
		last := dims[len(dims)-1]
		vals := make([]float32, n)
		if first != 0 {
			for i := int64(0); i < n; i += last {
				vals[i] = first
			}
		}
		t, err := graph.NewFloatTensor(g.UniqueName("fuse_cuda/block"), dt, dims, vals)
		if err != nil {
			b.Fail(err)
			return nil
		}
		v := b.Const(t)
		consts[key] = v
		return v
	}
	count := 0
	for _, sub := range slices.Clone(g.Nodes) {
		if sub.Op != "Sub" || sub.Domain != "" || sub.Graph() == nil {
			continue
		}
		prod, s := sub.Input(0), sub.Input(1)
		if prod.NumUses() != 1 || prod.IsGraphOutput() {
			continue
		}
		// Under autocast the product is bfloat16 (or float16) and cast to
		// float32 for the subtraction: the fold then runs in the product's
		// type, s cast to it, and the result is cast back.
		var widen *graph.Node
		if c := producerOp(prod, "Cast"); c != nil && graph.DataType(c.AttrInt("to", 0)) == graph.Float && c.Input(0).NumUses() == 1 {
			widen, prod = c, c.Input(0)
		}
		mm := producerOp(prod, "MatMul")
		if mm == nil {
			continue
		}
		tr := producerOp(mm.Input(1), "Transpose")
		if tr == nil {
			continue
		}
		G, V := mm.Input(0), tr.Input(0)
		dt := inf.DType(prod)
		half := dt == graph.BFloat16 || dt == graph.Float16
		sdt := graph.Float // s's type: float32, or the product's own
		switch {
		case widen == nil && dt == graph.Float:
		case widen != nil && half:
		case widen == nil && half: // the softmax in the compute type (softmax-f32 left out)
			sdt = dt
		default:
			continue
		}
		if inf.DType(G) != dt || inf.DType(V) != dt || inf.DType(s) != sdt {
			continue
		}
		pd, ok1 := staticDims(inf, prod)
		gd, ok2 := staticDims(inf, G)
		vd, ok3 := staticDims(inf, V)
		sd, ok4 := staticDims(inf, s)
		if !ok1 || !ok2 || !ok3 || !ok4 {
			continue
		}
		r := len(pd)
		if r < 2 || len(gd) != r || len(vd) != r || len(sd) != r {
			continue
		}
		perm := tr.AttrInts("perm")
		want := make([]int64, r)
		for i := range want {
			want[i] = int64(i)
		}
		want[r-1], want[r-2] = want[r-2], want[r-1]
		if !slices.Equal(perm, want) {
			continue
		}
		lead := pd[:r-2]
		if !slices.Equal(gd[:r-2], lead) || !slices.Equal(vd[:r-2], lead) || !slices.Equal(sd[:r-2], lead) ||
			sd[r-2] != pd[r-2] || sd[r-1] != 1 || gd[r-1] != vd[r-1] {
			continue
		}
		k := gd[r-1]
		per := int64(4) // elements in 16 bytes: float32
		if dt != graph.Float {
			per = 8
		}
		pad := (per - (k+1)%per) % per
		t, u := pd[r-2], pd[r-1]
		negS := b.Neg(s)
		if sdt != dt {
			negS = b.Cast(negS, dt)
		}
		ins := []*graph.Value{G, negS}
		if pad > 0 {
			ins = append(ins, block(dt, append(slices.Clone(lead), t, pad), 0))
		}
		gx := b.Concat(-1, ins...)
		vx := b.Concat(-1, V, block(dt, append(slices.Clone(lead), u, 1+pad), 1))
		folded := b.MatMul(gx, b.Transpose(vx, want...))
		if widen != nil {
			folded = b.Cast(folded, graph.Float)
		}
		if err := b.Err(); err != nil {
			return count, err
		}
		if err := replaceNode(g, sub, folded); err != nil {
			return count, err
		}
		count++
	}
	return count, nil
}
