package infer

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// Info is what is known before running about a value: its element
// type, its rank (-1 unknown) and its dims (nil unknown).
type Info struct {
	DType graph.DataType
	Rank  int
	Dims  []graph.Dim
}

// Inferer derives element types and ranks of values the model does not
// annotate, from the ops that produce them. It knows the ops gradient rules
// meet; anything else is unknown, and rules that need a rank say so.
type Inferer struct {
	memo map[*graph.Value]Info
}

func New() *Inferer { return &Inferer{memo: map[*graph.Value]Info{}} }

func (s *Inferer) DType(v *graph.Value) graph.DataType { return s.Info(v).DType }
func (s *Inferer) Rank(v *graph.Value) int             { return s.Info(v).Rank }

// set records what a pass knows about a value it created.
func (s *Inferer) Set(v *graph.Value, info Info) { s.memo[v] = info }

func (s *Inferer) Info(v *graph.Value) Info {
	if v == nil {
		return Info{Rank: -1}
	}
	if in, ok := s.memo[v]; ok {
		return in
	}
	s.memo[v] = Info{Rank: -1} // cycles (invalid graphs) end here
	in := s.compute(v)
	s.memo[v] = in
	return in
}

func (s *Inferer) compute(v *graph.Value) Info {
	if t := graph.ConstTensor(v); t != nil { // initializers and Constant nodes
		return Info{DType: t.DType, Rank: len(t.Dims), Dims: constDims(t.Dims)}
	}
	if v.Type != nil && v.Type.Shape != nil {
		dims := v.Type.Shape
		if hasUnknown(dims) {
			// Exporters leave some dims of value_info unnamed; what the
			// producer implies (e.g. the batch symbol of its input) lets
			// un-broadcasting stay static.
			if derived := s.fromProducer(v); derived.Rank == len(dims) && derived.Dims != nil {
				merged := append([]graph.Dim(nil), dims...)
				for i, d := range merged {
					if !d.Known() && d.Param == "" {
						merged[i] = derived.Dims[i]
					}
				}
				dims = merged
			}
		}
		return Info{DType: v.Type.DType, Rank: len(dims), Dims: nameUnknown(v, len(dims), dims)}
	}
	return s.fromProducer(v)
}

func hasUnknown(dims []graph.Dim) bool {
	for _, d := range dims {
		if !d.Known() && d.Param == "" {
			return true
		}
	}
	return false
}

// fromProducer infers v's type and shape from the node computing it.
func (s *Inferer) fromProducer(v *graph.Value) Info {
	in := Info{Rank: -1}
	if v.Type != nil {
		in.DType = v.Type.DType
	}
	n, idx := v.Producer()
	if n == nil {
		return in
	}
	if in.DType == graph.Undefined {
		in.DType = s.outDType(n, idx)
	}
	in.Rank = s.outRank(n, idx)
	if in.Rank >= 0 && sameShapeOps[n.Op] {
		if x := s.Info(n.Input(0)); x.Dims != nil {
			in.Dims = x.Dims
		}
	}
	if in.Rank >= 0 && in.Dims == nil {
		in.Dims = s.outDims(n, in.Rank)
	}
	if n.Op == "Shape" && in.Dims == nil {
		if l := s.Length1D(v); l >= 0 {
			in.Dims = []graph.Dim{{Value: int64(l)}}
		}
	}
	in.Dims = nameUnknown(v, in.Rank, in.Dims)
	return in
}

// nameUnknown gives every unknown dim of v a symbol of its own
// ("v.name?axis"), building the dims when only the rank is known. A
// symbol then travels through the ops that keep sizes (elementwise ops,
// Transpose, MatMul, Reshape of a shape read at run time, ...), so the
// gradient rules can tell, say, that a bias Add in a model of dynamic
// shapes needs no reduction, even in opsets whose Slice and ReduceSum
// cannot find reduction axes at run time. Symbols never equal one another
// unless the sizes are provably equal.
func nameUnknown(v *graph.Value, rank int, dims []graph.Dim) []graph.Dim {
	if rank < 0 || (dims != nil && len(dims) != rank) {
		return dims
	}
	var out []graph.Dim
	for i := range rank {
		if dims != nil && (dims[i].Known() || dims[i].Param != "") {
			continue
		}
		if out == nil {
			out = make([]graph.Dim, rank)
			if dims != nil {
				copy(out, dims)
			}
		}
		out[i] = graph.Dim{Value: -1, Param: fmt.Sprintf("%s?%d", v.Name, i)}
	}
	if out == nil {
		return dims
	}
	return out
}

// broadcastDims is numpy broadcasting, right-aligned: a size other than 1
// wins, a symbol shared by every non-1 operand is kept, else unknown.
func broadcastDims(ds [][]graph.Dim, rank int) []graph.Dim {
	out := make([]graph.Dim, rank)
	for i := range out {
		out[i] = graph.Dim{Value: 1}
	}
	for _, d := range ds {
		if d == nil || len(d) > rank {
			return nil
		}
		off := rank - len(d)
		for i, di := range d {
			o := &out[off+i]
			switch {
			case di.Known() && di.Value == 1:
			case o.Known() && o.Value == 1:
				*o = di
			case di.Known() && o.Known() && di.Value == o.Value:
			case di.Param != "" && di.Param == o.Param:
			case di.Known() && di.Value != 1 && !o.Known():
				*o = graph.Dim{Value: di.Value}
			case o.Known():
			default:
				*o = graph.Dim{Value: -1}
			}
		}
	}
	return out
}

// outDims derives dims (unknown ones as Value −1) for the ops whose
// sizes exporters' index arithmetic depends on: Unsqueeze adds 1s, Concat
// adds up its axis. GatherND's rank, for one, needs the last dim of
// indices built as Concat(Unsqueeze(i, −1), Unsqueeze(j, −1), axis=−1).
func (s *Inferer) outDims(n *graph.Node, rank int) []graph.Dim {
	dimsOf := func(v *graph.Value) []graph.Dim {
		in := s.Info(v)
		if in.Dims != nil {
			return in.Dims
		}
		if in.Rank < 0 {
			return nil
		}
		out := make([]graph.Dim, in.Rank)
		for i := range out {
			out[i] = graph.Dim{Value: -1}
		}
		return out
	}
	switch n.Op {
	case "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Sum", "Equal", "Less", "Greater",
		"LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu":
		var ds [][]graph.Dim
		for _, in := range n.Inputs() {
			ds = append(ds, dimsOf(in))
		}
		return broadcastDims(ds, rank)
	case "Unsqueeze":
		x := dimsOf(n.Input(0))
		axes, ok := s.Axes(n)
		if x == nil || !ok || len(x)+len(axes) != rank {
			return nil
		}
		one := make([]bool, rank)
		for _, a := range axes {
			if a < 0 {
				a += int64(rank)
			}
			if a < 0 || a >= int64(rank) {
				return nil
			}
			one[a] = true
		}
		out := make([]graph.Dim, 0, rank)
		k := 0
		for i := range rank {
			if one[i] {
				out = append(out, graph.Dim{Value: 1})
			} else {
				out = append(out, x[k])
				k++
			}
		}
		return out
	case "Concat":
		a := n.AttrInt("axis", 0)
		if a < 0 {
			a += int64(rank)
		}
		if a < 0 || a >= int64(rank) {
			return nil
		}
		out := make([]graph.Dim, rank)
		for i := range out {
			out[i] = graph.Dim{Value: -1}
		}
		total := int64(0)
		for _, in := range n.Inputs() {
			d := dimsOf(in)
			if len(d) != rank {
				return nil
			}
			for i := range rank {
				if int64(i) != a && !out[i].Known() && out[i].Param == "" {
					out[i] = d[i]
				}
			}
			if total >= 0 && d[a].Known() {
				total += d[a].Value
			} else {
				total = -1
			}
		}
		out[a] = graph.Dim{Value: total}
		return out
	case "MatMul":
		a, b := dimsOf(n.Input(0)), dimsOf(n.Input(1))
		switch {
		case a == nil || b == nil:
			return nil
		case len(a) >= 2 && len(b) >= 2:
			batch := broadcastDims([][]graph.Dim{a[:len(a)-2], b[:len(b)-2]}, rank-2)
			if batch == nil {
				return nil
			}
			return append(batch, a[len(a)-2], b[len(b)-1])
		case len(a) == 1 && len(b) >= 2:
			return append(append([]graph.Dim{}, b[:len(b)-2]...), b[len(b)-1])
		case len(b) == 1 && len(a) >= 2:
			return append([]graph.Dim{}, a[:len(a)-1]...)
		}
		return nil
	case "Gemm":
		a, b := dimsOf(n.Input(0)), dimsOf(n.Input(1))
		if len(a) != 2 || len(b) != 2 {
			return nil
		}
		return []graph.Dim{a[n.AttrInt("transA", 0)&1], b[1-n.AttrInt("transB", 0)&1]}
	case "Transpose":
		x := dimsOf(n.Input(0))
		if len(x) != rank {
			return nil
		}
		perm := n.AttrInts("perm")
		out := make([]graph.Dim, rank)
		for i := range out {
			p := int64(rank - 1 - i)
			if perm != nil {
				p = perm[i]
			}
			if p < 0 || p >= int64(rank) {
				return nil
			}
			out[i] = x[p]
		}
		return out
	case "Squeeze":
		x := dimsOf(n.Input(0))
		axes, ok := s.Axes(n)
		if x == nil || !ok {
			return nil
		}
		drop := make([]bool, len(x))
		for _, a := range axes {
			a, err := graph.NormAxis(a, len(x))
			if err != nil {
				return nil
			}
			drop[a] = true
		}
		var out []graph.Dim
		for i, d := range x {
			if len(axes) == 0 && d.Known() && d.Value == 1 || drop[i] {
				continue
			}
			out = append(out, d)
		}
		if len(out) != rank {
			return nil
		}
		return out
	case "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp":
		x := dimsOf(n.Input(0))
		axes, ok := s.Axes(n)
		if x == nil || !ok {
			return nil
		}
		if len(axes) == 0 && n.AttrInt("noop_with_empty_axes", 0) != 0 {
			return x
		}
		reduced := make([]bool, len(x))
		for i := range reduced {
			reduced[i] = len(axes) == 0
		}
		for _, a := range axes {
			a, err := graph.NormAxis(a, len(x))
			if err != nil {
				return nil
			}
			reduced[a] = true
		}
		keep := n.AttrInt("keepdims", 1) != 0
		var out []graph.Dim
		for i, d := range x {
			switch {
			case !reduced[i]:
				out = append(out, d)
			case keep:
				out = append(out, graph.Dim{Value: 1})
			}
		}
		if len(out) != rank {
			return nil
		}
		return out
	case "Slice":
		return s.sliceDims(n, dimsOf(n.Input(0)), rank)
	case "Reshape":
		return s.reshapeDims(n, dimsOf(n.Input(0)), rank)
	case "Gather":
		x, idx := dimsOf(n.Input(0)), dimsOf(n.Input(1))
		if x == nil || idx == nil {
			return nil
		}
		a, err := graph.NormAxis(n.AttrInt("axis", 0), len(x))
		if err != nil {
			return nil
		}
		out := append(append(append([]graph.Dim{}, x[:a]...), idx...), x[a+1:]...)
		if len(out) != rank {
			return nil
		}
		return out
	case "Conv", "AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool":
		// Channels are what Concat's gradient needs in convolutional
		// necks: Conv's come from the weight, pooling keeps x's.
		return s.windowDims(n, rank, dimsOf(n.Input(0)))
	}
	return nil
}

// sliceDims are the dims of a Slice with constant bounds (attributes
// before opset 10, constant inputs after): a known size is cut as ONNX
// clamps it; an unknown one keeps its symbol when the slice takes it whole.
func (s *Inferer) sliceDims(n *graph.Node, x []graph.Dim, rank int) []graph.Dim {
	if len(x) != rank {
		return nil
	}
	var starts, ends, axes, steps []int64
	if n.Attr("starts") != nil {
		starts, ends, axes = n.AttrInts("starts"), n.AttrInts("ends"), n.AttrInts("axes")
	} else {
		var ok bool
		if starts, ok = graph.ConstInts(n.Input(1)); !ok {
			return nil
		}
		if ends, ok = graph.ConstInts(n.Input(2)); !ok {
			return nil
		}
		if v := n.Input(3); v != nil {
			if axes, ok = graph.ConstInts(v); !ok {
				return nil
			}
		}
		if v := n.Input(4); v != nil {
			if steps, ok = graph.ConstInts(v); !ok {
				return nil
			}
		}
	}
	if len(ends) != len(starts) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
		return nil
	}
	out := append([]graph.Dim{}, x...)
	for k := range starts {
		a := int64(k)
		if axes != nil {
			a = axes[k]
		}
		a, err := graph.NormAxis(a, rank)
		if err != nil {
			return nil
		}
		step := int64(1)
		if steps != nil {
			step = steps[k]
		}
		switch {
		case x[a].Known():
			l := SliceLen(int(x[a].Value), starts[k], ends[k], step)
			if l < 0 {
				return nil
			}
			out[a] = graph.Dim{Value: int64(l)}
		case step == 1 && starts[k] == 0 && ends[k] >= math.MaxInt32:
			// the whole axis: the size and its symbol stay
		default:
			out[a] = graph.Dim{Value: -1}
		}
	}
	return out
}

// reshapeDims reads Reshape's target from the shape arithmetic that
// built it (see shapeVec): 0 copies x's dim (unless allowzero), −1 is
// what is left of x's size once the other dims are divided out — a known
// number, or one symbol of x's that the others do not account for.
func (s *Inferer) reshapeDims(n *graph.Node, x []graph.Dim, rank int) []graph.Dim {
	target := s.shapeVec(n.Input(1))
	if len(target) != rank {
		return nil
	}
	out := make([]graph.Dim, rank)
	infer := -1
	for i, e := range target {
		switch {
		case e.Param != "":
			out[i] = e
		case e.Value == 0 && n.AttrInt("allowzero", 0) == 0:
			if i >= len(x) {
				return nil
			}
			out[i] = x[i]
		case e.Value == -1 && e.Param == "" && infer < 0:
			infer = i
		case e.Value >= 0:
			out[i] = graph.Dim{Value: e.Value}
		default:
			out[i] = graph.Dim{Value: -1}
		}
	}
	if infer < 0 {
		return out
	}
	out[infer] = graph.Dim{Value: -1}
	if x == nil {
		return out
	}
	// Divide x's dims by the others: matching symbols cancel, known sizes
	// multiply up.
	left := append([]graph.Dim{}, x...)
	known := int64(1)
	for i, d := range out {
		if i == infer {
			continue
		}
		switch {
		case d.Known():
			known *= d.Value
		case d.Param != "":
			found := false
			for j, l := range left {
				if l.Param == d.Param {
					left = append(left[:j], left[j+1:]...)
					found = true
					break
				}
			}
			if !found {
				return out
			}
		default:
			return out
		}
	}
	have := int64(1)
	var syms []graph.Dim
	for _, l := range left {
		if l.Known() {
			have *= l.Value
		} else {
			syms = append(syms, l)
		}
	}
	switch {
	case len(syms) == 0 && known > 0 && have%known == 0:
		out[infer] = graph.Dim{Value: have / known}
	case len(syms) == 1 && syms[0].Param != "" && have == known:
		out[infer] = syms[0]
	}
	return out
}

// shapeVec evaluates a 1-D int64 tensor built by shape arithmetic —
// constants, Shape, Cast, Concat, Slice, Gather, Unsqueeze, Squeeze —
// entry by entry: a number (Dim.Value, which may be 0 or −1 here, as
// Reshape reads them), a symbol (Dim.Param), or nil when not derivable.
func (s *Inferer) shapeVec(v *graph.Value) []graph.Dim {
	if v == nil {
		return nil
	}
	if t := graph.ConstTensor(v); t != nil {
		xs, err := t.Int64s()
		if err != nil || len(t.Dims) > 1 {
			return nil
		}
		out := make([]graph.Dim, len(xs))
		for i, x := range xs {
			out[i] = graph.Dim{Value: x}
		}
		return out
	}
	n, _ := v.Producer()
	if n == nil {
		return nil
	}
	switch n.Op {
	case "Shape":
		x := s.Info(n.Input(0)).Dims
		if x == nil {
			return nil
		}
		r := len(x)
		start, end := clampIndex(n.AttrInt("start", 0), r), clampIndex(n.AttrInt("end", int64(r)), r)
		if end <= start {
			return []graph.Dim{}
		}
		out := append([]graph.Dim{}, x[start:end]...)
		for _, d := range out {
			if !d.Known() && d.Param == "" {
				return nil // an unnamed unknown would read as −1
			}
		}
		return out
	case "Cast":
		if dt := graph.DataType(n.AttrInt("to", 0)); dt == graph.Int64 || dt == graph.Int32 {
			return s.shapeVec(n.Input(0))
		}
	case "Identity":
		return s.shapeVec(n.Input(0))
	case "Squeeze", "Unsqueeze":
		// between a scalar and a one-element vector
		if in := s.shapeVec(n.Input(0)); len(in) == 1 {
			return in
		}
	case "Concat":
		var out []graph.Dim
		for _, in := range n.Inputs() {
			p := s.shapeVec(in)
			if p == nil {
				return nil
			}
			out = append(out, p...)
		}
		return out
	case "Slice":
		x := s.shapeVec(n.Input(0))
		if x == nil {
			return nil
		}
		st, en, axes := n.AttrInts("starts"), n.AttrInts("ends"), n.AttrInts("axes")
		step := int64(1)
		if n.Attr("starts") == nil {
			var ok bool
			if st, ok = graph.ConstInts(n.Input(1)); !ok {
				return nil
			}
			if en, ok = graph.ConstInts(n.Input(2)); !ok {
				return nil
			}
			if a := n.Input(3); a != nil {
				if axes, ok = graph.ConstInts(a); !ok {
					return nil
				}
			}
			if p := n.Input(4); p != nil {
				ps, ok := graph.ConstInts(p)
				if !ok || len(ps) != 1 {
					return nil
				}
				step = ps[0]
			}
		}
		if len(st) != 1 || len(en) != 1 || (axes != nil && (len(axes) != 1 || (axes[0] != 0 && axes[0] != -1))) || step != 1 {
			return nil
		}
		l := int64(len(x))
		a, b := st[0], en[0]
		if a < 0 {
			a += l
		}
		if b < 0 {
			b += l
		}
		a, b = min(max(a, 0), l), min(max(b, 0), l)
		if b <= a {
			return []graph.Dim{}
		}
		return append([]graph.Dim{}, x[a:b]...)
	case "Gather":
		x := s.shapeVec(n.Input(0))
		idx, ok := graph.ConstInts(n.Input(1))
		if x == nil || !ok || n.AttrInt("axis", 0) != 0 {
			return nil
		}
		out := make([]graph.Dim, len(idx))
		for i, k := range idx {
			if k < 0 {
				k += int64(len(x))
			}
			if k < 0 || k >= int64(len(x)) {
				return nil
			}
			out[i] = x[k]
		}
		return out
	}
	return nil
}

// windowDims are the dims of a Conv or pooling output: x's batch, the
// channels (Conv: the weight's dim 0), and each spatial size from the
// window arithmetic when x's size, the kernel and the pads are static.
func (s *Inferer) windowDims(n *graph.Node, rank int, x []graph.Dim) []graph.Dim {
	if len(x) != rank || rank < 2 {
		return nil
	}
	out := make([]graph.Dim, rank)
	for i := range out {
		out[i] = graph.Dim{Value: -1}
	}
	out[0], out[1] = x[0], x[1]
	k := rank - 2
	if n.Op == "GlobalAveragePool" || n.Op == "GlobalMaxPool" {
		for i := 2; i < rank; i++ {
			out[i] = graph.Dim{Value: 1}
		}
		return out
	}
	kernel := n.AttrInts("kernel_shape")
	if n.Op == "Conv" {
		out[1] = graph.Dim{Value: -1}
		w := s.Info(n.Input(1))
		if w.Dims != nil && len(w.Dims) == rank {
			out[1] = w.Dims[0]
			if kernel == nil {
				kernel = make([]int64, k)
				for i := range k {
					kernel[i] = -1
					if w.Dims[2+i].Known() {
						kernel[i] = w.Dims[2+i].Value
					}
				}
			}
		}
	}
	at := func(name string, i int, def int64) int64 {
		if xs := n.AttrInts(name); len(xs) > i {
			return xs[i]
		}
		return def
	}
	autoPad := "NOTSET"
	if a := n.Attr("auto_pad"); a != nil && len(a.S) > 0 {
		autoPad = string(a.S)
	}
	for i := range k {
		xi := x[2+i]
		if len(kernel) != k || kernel[i] < 0 {
			continue
		}
		st, d := at("strides", i, 1), at("dilations", i, 1)
		span := d*(kernel[i]-1) + 1
		if !xi.Known() {
			// A window that keeps the size keeps x's symbol.
			same := st == 1 && (autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER" ||
				autoPad == "NOTSET" && at("pads", i, 0)+at("pads", k+i, 0) == span-1 ||
				autoPad == "VALID" && span == 1)
			if same {
				out[2+i] = xi
			}
			continue
		}
		var size int64
		switch autoPad {
		case "NOTSET":
			free := xi.Value + at("pads", i, 0) + at("pads", k+i, 0) - span
			if n.AttrInt("ceil_mode", 0) != 0 {
				size = (free+st-1)/st + 1
			} else {
				size = free/st + 1
			}
		case "VALID":
			size = (xi.Value-span)/st + 1
		case "SAME_UPPER", "SAME_LOWER":
			size = (xi.Value + st - 1) / st
		default:
			continue
		}
		out[2+i] = graph.Dim{Value: size}
	}
	return out
}

func constDims(dims []int64) []graph.Dim {
	out := make([]graph.Dim, len(dims))
	for i, d := range dims {
		out[i] = graph.Dim{Value: d}
	}
	return out
}

// sameShapeOps produce output 0 shaped exactly like input 0.
var sameShapeOps = map[string]bool{
	"Relu": true, "Tanh": true, "Sigmoid": true, "Exp": true, "Log": true, "Sqrt": true,
	"Neg": true, "Reciprocal": true, "Erf": true, "Gelu": true, "Softmax": true, "LogSoftmax": true,
	"LayerNormalization": true, "Cast": true, "Identity": true, "Dropout": true, "IsNaN": true,
	"IsInf": true, "Not": true, "CumSum": true, "Abs": true, "Sin": true, "Cos": true, "Softplus": true,
	"LeakyRelu": true, "Elu": true, "DequantizeLinear": true, "QuantizeLinear": true, "HardSigmoid": true, "Clip": true, "SimplifiedLayerNormalization": true,
	"Trilu": true, "CastLike": true, "Sign": true, "Floor": true, "Ceil": true, "Round": true,
	"BatchNormalization": true, "InstanceNormalization": true, "HardSwish": true, "LRN": true,
}

// dataFirstOps take their element type from input 0 alone: their other
// inputs are shapes, indices, axes or exponents of other types.
var dataFirstOps = map[string]bool{
	"Gather": true, "GatherElements": true, "GatherND": true, "Reshape": true, "Expand": true,
	"Slice": true, "Tile": true, "Pad": true, "Squeeze": true, "Unsqueeze": true, "Split": true,
	"Transpose": true, "CumSum": true, "ScatterElements": true, "ScatterND": true, "Pow": true,
	"Trilu": true, "Flatten": true, "Clip": true, "Dropout": true, "Resize": true,
}

func (s *Inferer) outDType(n *graph.Node, idx int) graph.DataType {
	switch n.Op {
	case "Cast":
		return graph.DataType(n.AttrInt("to", 0))
	case "Shape", "Size", "NonZero", "ArgMax", "ArgMin":
		return graph.Int64
	case "MaxPool":
		if idx == 1 {
			return graph.Int64 // Indices
		}
	case "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Not", "Xor", "IsNaN", "IsInf":
		return graph.Bool
	case "Constant":
		if a := n.Attr("value"); a != nil && a.T != nil {
			return a.T.DType
		}
		if n.Attr("value_int") != nil || n.Attr("value_ints") != nil {
			return graph.Int64
		}
		return graph.Float
	case "ConstantOfShape":
		if a := n.Attr("value"); a != nil && a.T != nil {
			return a.T.DType
		}
		return graph.Float
	case "Where", "DequantizeLinear":
		return s.DType(n.Input(1))
	case "CastLike":
		return s.DType(n.Input(1))
	case "LayerNormalization":
		if idx > 0 {
			return graph.Float
		}
	}
	if dataFirstOps[n.Op] {
		return s.DType(n.Input(0))
	}
	for _, in := range n.Inputs() {
		if dt := s.DType(in); dt != graph.Undefined {
			return dt
		}
	}
	return graph.Undefined
}

func (s *Inferer) outRank(n *graph.Node, idx int) int {
	r := func(i int) int { return s.Rank(n.Input(i)) }
	switch n.Op {
	case "Add", "Sub", "Mul", "Div", "Pow", "Where", "Max", "Min", "Equal", "Less", "Greater",
		"LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Sum", "Mod", "PRelu":
		best := -1
		for i := range n.NumInputs() {
			ri := r(i)
			if ri < 0 {
				return -1
			}
			best = max(best, ri)
		}
		return best
	case "MatMul":
		a, b := r(0), r(1)
		if a < 0 || b < 0 {
			return -1
		}
		if a == 1 && b == 1 {
			return 0
		}
		if a == 1 || b == 1 {
			return max(a, b) - 1
		}
		return max(a, b)
	case "Gemm", "Flatten":
		return 2
	case "Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "Upsample", "Resize":
		return r(0)
	case "Shape":
		return 1
	case "Size":
		return 0
	case "Transpose", "Concat", "Slice", "Split", "Pad", "Tile", "ScatterND", "ScatterElements", "GatherElements":
		if n.Op == "GatherElements" {
			return r(1)
		}
		return r(0)
	case "Reshape":
		return s.Length1D(n.Input(1))
	case "Expand":
		a, l := r(0), s.Length1D(n.Input(1))
		if a < 0 || l < 0 {
			return -1
		}
		return max(a, l)
	case "ConstantOfShape":
		return s.Length1D(n.Input(0))
	case "Range":
		return 1
	case "Constant":
		if a := n.Attr("value"); a != nil && a.T != nil {
			return len(a.T.Dims)
		}
		if n.Attr("value_ints") != nil || n.Attr("value_floats") != nil {
			return 1
		}
		return 0
	case "Unsqueeze", "Squeeze":
		x := r(0)
		axes, ok := s.Axes(n)
		if x < 0 || !ok {
			return -1
		}
		if n.Op == "Unsqueeze" {
			return x + len(axes)
		}
		if len(axes) == 0 {
			// Squeeze without axes drops every size-1 dim: count them.
			dims := s.Info(n.Input(0)).Dims
			if dims == nil {
				return -1
			}
			kept := 0
			for _, d := range dims {
				if !d.Known() {
					return -1
				}
				if d.Value != 1 {
					kept++
				}
			}
			return kept
		}
		return x - len(axes)
	case "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp":
		x := r(0)
		if x < 0 {
			return -1
		}
		if n.AttrInt("keepdims", 1) != 0 {
			return x
		}
		axes, ok := s.Axes(n)
		if !ok {
			return -1
		}
		if len(axes) == 0 {
			return 0
		}
		return x - len(axes)
	case "Gather":
		a, b := r(0), r(1)
		if a < 0 || b < 0 {
			return -1
		}
		return a - 1 + b
	case "GatherND":
		// data rank + indices rank − indices.shape[-1] − 1 − batch_dims
		a, b := r(0), s.Info(n.Input(1))
		if a < 0 || b.Dims == nil || len(b.Dims) == 0 || !b.Dims[len(b.Dims)-1].Known() {
			return -1
		}
		return a + len(b.Dims) - int(b.Dims[len(b.Dims)-1].Value) - 1 - int(n.AttrInt("batch_dims", 0))
	}
	if sameShapeOps[n.Op] && idx == 0 {
		return r(0)
	}
	return -1
}

// axes returns a node's axes, from its attribute or its constant second
// input (opset 13+ / 18+ forms); ok is false when they are computed.
func (s *Inferer) Axes(n *graph.Node) ([]int64, bool) {
	if a := n.Attr("axes"); a != nil {
		return a.Ints, true
	}
	if n.NumInputs() < 2 || n.Input(1) == nil {
		return nil, true
	}
	t := graph.ConstTensor(n.Input(1))
	if t == nil {
		return nil, false
	}
	xs, err := t.Int64s()
	return xs, err == nil
}

// length1D is the static length of a 1-D int64 tensor such as a shape
// input, -1 when unknown.
func (s *Inferer) Length1D(v *graph.Value) int {
	if v == nil {
		return -1
	}
	if t := graph.ConstTensor(v); t != nil {
		if len(t.Dims) == 1 {
			return int(t.Dims[0])
		}
		return -1
	}
	if in := s.Info(v); in.Dims != nil && len(in.Dims) == 1 && in.Dims[0].Known() {
		return int(in.Dims[0].Value)
	}
	n, _ := v.Producer()
	if n == nil {
		return -1
	}
	switch n.Op {
	case "Shape":
		r := s.Rank(n.Input(0))
		if r < 0 {
			return -1
		}
		start, end := clampIndex(n.AttrInt("start", 0), r), clampIndex(n.AttrInt("end", int64(r)), r)
		return max(0, end-start)
	case "Slice":
		// A slice of a shape vector (axis 0, constant bounds).
		l := s.Length1D(n.Input(0))
		if l < 0 {
			return -1
		}
		st, ok1 := graph.ConstInts(n.Input(1))
		en, ok2 := graph.ConstInts(n.Input(2))
		if !ok1 || !ok2 || len(st) != 1 || len(en) != 1 {
			return -1
		}
		step := int64(1)
		if v := n.Input(4); v != nil {
			xs, ok := graph.ConstInts(v)
			if !ok || len(xs) != 1 {
				return -1
			}
			step = xs[0]
		}
		if v := n.Input(3); v != nil {
			if xs, ok := graph.ConstInts(v); !ok || len(xs) != 1 || (xs[0] != 0 && xs[0] != -1) {
				return -1
			}
		}
		return SliceLen(l, st[0], en[0], step)
	case "Gather":
		// Picking entries of a 1-D vector with a 1-D index.
		if idx := s.Info(n.Input(1)); idx.Rank == 1 && idx.Dims != nil && idx.Dims[0].Known() && s.Rank(n.Input(0)) == 1 {
			return int(idx.Dims[0].Value)
		}
	case "Concat":
		total := 0
		for _, in := range n.Inputs() {
			l := s.Length1D(in)
			if l < 0 {
				return -1
			}
			total += l
		}
		return total
	case "Unsqueeze":
		if s.Rank(n.Input(0)) == 0 {
			return 1
		}
	case "Cast", "Identity":
		return s.Length1D(n.Input(0))
	}
	return -1
}

// clampIndex maps a possibly negative index into [0, n] as Shape's start
// and end do.
func clampIndex(i int64, n int) int {
	if i < 0 {
		i += int64(n)
	}
	return int(min(max(i, 0), int64(n)))
}

// sliceLen is the length of x[start:end:step] for len(x) = n, with ONNX
// Slice's clamping.
func SliceLen(n int, start, end, step int64) int {
	if step == 0 {
		return -1
	}
	N := int64(n)
	if start < 0 {
		start += N
	}
	if end < 0 {
		end += N
	}
	if step > 0 {
		start, end = min(max(start, 0), N), min(max(end, 0), N)
		if end <= start {
			return 0
		}
		return int((end - start + step - 1) / step)
	}
	start, end = min(max(start, 0), N-1), min(max(end, -1), N-1)
	if start <= end {
		return 0
	}
	return int((start - end - step - 1) / -step)
}
