package rewrite

// MatMulNBits (com.microsoft): Y = A · dequant(B)ᵀ, B holding N rows of K
// codes of `bits` bits, packed low-first in blocks of block_size along K,
// each block with a scale and a zero point (packed uint8, default
// 2^(bits-1)). A LoRA branch sits beside it like beside any MatMul; fuse
// re-quantizes W + s·ΔW block by block with the blocks' own scales and
// zero points, or replaces the node by a float MatMul.

import (
	"fmt"
	"math"
	"strings"

	"github.com/loracc/loracc/graph"
)

// NBits describes a MatMulNBits weight.
type NBits struct {
	K, N, Bits, BlockSize int64
	B, Scales, ZeroPoints *graph.Tensor // ZeroPoints nil: the default
}

func (q *NBits) blocks() int64 { return (q.K + q.BlockSize - 1) / q.BlockSize }

// nbitsWeight reads a MatMulNBits node's weight; reason says why not.
func nbitsWeight(n *graph.Node) (*NBits, string) {
	q := &NBits{K: n.AttrInt("K", 0), N: n.AttrInt("N", 0), Bits: n.AttrInt("bits", 4), BlockSize: n.AttrInt("block_size", 0)}
	if q.K <= 0 || q.N <= 0 || q.BlockSize <= 0 || q.Bits < 2 || q.Bits > 8 {
		return nil, fmt.Sprintf("MatMulNBits with K=%d N=%d bits=%d block_size=%d is not supported", q.K, q.N, q.Bits, q.BlockSize)
	}
	if q.B, q.Scales = constTensor(n.Input(1)), constTensor(n.Input(2)); q.B == nil || q.Scales == nil {
		return nil, "MatMulNBits weight or scales are not constants"
	}
	if n.NumInputs() > 3 && n.Input(3) != nil {
		if q.ZeroPoints = constTensor(n.Input(3)); q.ZeroPoints == nil || q.ZeroPoints.DType != graph.Uint8 {
			return nil, "MatMulNBits zero points are not packed uint8 constants"
		}
	}
	if n.NumInputs() > 4 && n.Input(4) != nil {
		return nil, "MatMulNBits with g_idx is not supported"
	}
	blob := q.BlockSize * q.Bits / 8
	if q.B.DType != graph.Uint8 || len(q.B.Dims) != 3 || q.B.Dims[0] != q.N || q.B.Dims[1] != q.blocks() || q.B.Dims[2] != blob {
		return nil, fmt.Sprintf("MatMulNBits weight %s%v does not match K=%d N=%d", q.B.DType, q.B.Dims, q.K, q.N)
	}
	if ns, err := q.Scales.NumElements(); err != nil || ns != q.N*q.blocks() || !q.Scales.DType.IsFloat() {
		return nil, "MatMulNBits scales do not match N × blocks"
	}
	return q, ""
}

// code reads code k (0-based along the packed bits) of a byte slice.
func code(raw []byte, k, bits int64) int64 {
	bit := k * bits
	v := int64(0)
	for b := int64(0); b < bits; b++ {
		if raw[(bit+b)/8]>>((bit+b)%8)&1 != 0 {
			v |= 1 << b
		}
	}
	return v
}

func putCode(raw []byte, k, bits, v int64) {
	bit := k * bits
	for b := int64(0); b < bits; b++ {
		pos, shift := (bit+b)/8, (bit+b)%8
		raw[pos] &^= 1 << shift
		if v>>b&1 != 0 {
			raw[pos] |= 1 << shift
		}
	}
}

// zeroPoint is block kb of row n's zero point.
func (q *NBits) zeroPoint(zp []byte, n, kb int64) int64 {
	if zp == nil {
		return 1 << (q.Bits - 1)
	}
	perRow := (q.blocks()*q.Bits + 7) / 8
	return code(zp[n*perRow:(n+1)*perRow], kb, q.Bits)
}

// dequantize returns W as float64 [K, N] (MatMul orientation).
func (q *NBits) dequantize() ([]float64, error) {
	raw, err := q.B.Bytes()
	if err != nil {
		return nil, err
	}
	scales, err := q.Scales.Floats()
	if err != nil {
		return nil, err
	}
	var zp []byte
	if q.ZeroPoints != nil {
		if zp, err = q.ZeroPoints.Bytes(); err != nil {
			return nil, err
		}
	}
	blob := q.BlockSize * q.Bits / 8
	w := make([]float64, q.K*q.N)
	for n := int64(0); n < q.N; n++ {
		for k := int64(0); k < q.K; k++ {
			kb := k / q.BlockSize
			block := raw[(n*q.blocks()+kb)*blob : (n*q.blocks()+kb+1)*blob]
			c := code(block, k%q.BlockSize, q.Bits)
			w[k*q.N+n] = float64(c-q.zeroPoint(zp, n, kb)) * float64(scales[n*q.blocks()+kb])
		}
	}
	return w, nil
}

// requantize packs w ([K, N]) on the blocks' grid and returns the largest
// absolute rounding error.
func (q *NBits) requantize(w []float64) ([]byte, float64, error) {
	raw, err := q.B.Bytes()
	if err != nil {
		return nil, 0, err
	}
	out := append([]byte(nil), raw...)
	scales, err := q.Scales.Floats()
	if err != nil {
		return nil, 0, err
	}
	var zp []byte
	if q.ZeroPoints != nil {
		if zp, err = q.ZeroPoints.Bytes(); err != nil {
			return nil, 0, err
		}
	}
	blob := q.BlockSize * q.Bits / 8
	top := int64(1)<<q.Bits - 1
	worst := 0.0
	for n := int64(0); n < q.N; n++ {
		for k := int64(0); k < q.K; k++ {
			kb := k / q.BlockSize
			s := float64(scales[n*q.blocks()+kb])
			z := q.zeroPoint(zp, n, kb)
			v := w[k*q.N+n]
			c := int64(0)
			if s != 0 {
				c = int64(math.RoundToEven(v/s)) + z
			}
			c = max(0, min(top, c))
			worst = math.Max(worst, math.Abs(float64(c-z)*s-v))
			putCode(out[(n*q.blocks()+kb)*blob:(n*q.blocks()+kb+1)*blob], k%q.BlockSize, q.Bits, c)
		}
	}
	return out, worst, nil
}

// fuseNBits folds s·ΔW into a MatMulNBits weight.
func fuseNBits(t *Target, d lowRank, toFloat bool, logf func(string, ...any)) error {
	q := t.NBits
	w, err := q.dequantize()
	if err != nil {
		return err
	}
	d.addRows(w, 0)
	maxW := 0.0
	for _, v := range w {
		maxW = math.Max(maxW, math.Abs(v))
	}
	if toFloat {
		n := t.Node
		g := n.Graph()
		raw, err := encode64(q.Scales.DType, w)
		if err != nil {
			return err
		}
		wv := g.Root().AddInitializer(graph.NewTensor(strings.TrimSuffix(t.Weight.Name, "_Q4")+".fused", q.Scales.DType, []int64{q.K, q.N}, raw))
		b := &graph.Builder{G: g, Prefix: n.Name + ".float", Metadata: n.Metadata}
		y := b.Op("MatMul", n.Output(0).Name+".float", []*graph.Value{n.Input(0), wv})
		if n.NumInputs() > 5 && n.Input(5) != nil {
			y = b.Op("Add", n.Output(0).Name+".biased", []*graph.Value{y, n.Input(5)})
		}
		out := n.Output(0)
		name, typ := out.Name, out.Type
		out.ReplaceAllUsesWith(y)
		ins := n.Inputs()
		if err := g.RemoveNode(n); err != nil {
			return err
		}
		if err := y.Rename(name); err != nil {
			return err
		}
		y.Type = typ
		for _, in := range ins {
			if in != nil && in.NumUses() == 0 && in.Const != nil && !in.IsGraphOutput() {
				in.Graph().RemoveInitializer(in)
			}
		}
		if err := g.SortTopo(); err != nil {
			return err
		}
		if logf != nil {
			logf("%s: MatMulNBits replaced by a %s MatMul (exact)", t.Name, q.Scales.DType)
		}
		return nil
	}
	if sharedValue(t.Weight, t.Node) {
		return fmt.Errorf("packed weight %q is shared with other nodes; fuse with --quantized float", t.Weight.Name)
	}
	raw, worst, err := q.requantize(w)
	if err != nil {
		return err
	}
	q.B.SetBytes(raw)
	if logf != nil {
		logf("%s: re-quantized to %d bits with its blocks' scales: max abs error %.3g (%.3g of max |W'|)", t.Name, q.Bits, worst, worst/math.Max(maxW, 1e-30))
	}
	return nil
}

// gradMatMulNBits: Y = A·Wᵀ with W [N, K] frozen, so dA = dY·W. W is
// dequantized when the training graph is compiled and kept as a float
// constant [N, K] for the backward product: exact, at the cost of a float
// copy of each such weight in the training graph (the forward keeps the
// packed kernel).
func gradMatMulNBits(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	if !c.needs(0) {
		return make([]*graph.Value, n.NumInputs()), nil
	}
	q, reason := nbitsWeight(n)
	if q == nil {
		return nil, fmt.Errorf("cannot differentiate: %s", reason)
	}
	w, err := q.dequantize() // [K, N]
	if err != nil {
		return nil, err
	}
	wt := make([]float32, len(w)) // [N, K]
	for k := int64(0); k < q.K; k++ {
		for j := int64(0); j < q.N; j++ {
			wt[j*q.K+k] = float32(w[k*q.N+j])
		}
	}
	t, err := graph.NewFloatTensor(n.Input(1).Name+".dequantized", q.Scales.DType, []int64{q.N, q.K}, wt)
	if err != nil {
		return nil, err
	}
	wv := c.g.Root().AddInitializer(t)
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.op("MatMul", vals(gys[0], wv))
	return out, nil
}
