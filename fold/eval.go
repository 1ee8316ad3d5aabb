package fold

// A small evaluator for the ops of shape arithmetic: integer, bool and
// float tensors of at most maxElements elements, with numpy broadcasting.
// It computes exactly what ONNX Runtime's kernels compute for these ops
// (integer arithmetic is exact; float values only pass through Cast,
// ConstantOfShape, Where, Expand, Reshape and the like, never rounded
// differently).

import (
	"errors"
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// maxElements bounds a folded tensor: shape vectors, index ranges and
// masks fold (a causal mask of batch 8 × 512 tokens, [8, 1, 512, 512],
// has 2M elements); anything the size of activations stays in the graph.
const maxElements = 1 << 22

// errNoFold says a node is left as it is (an op or a type the evaluator
// does not know, or a result too large); it is not a failure.
var errNoFold = errors.New("not folded")

// tensor is a constant during folding. Integer and bool data live in i,
// float data in f (as float64, converted exactly from the stored type).
type tensor struct {
	dt   graph.DataType
	dims []int64
	i    []int64
	f    []float64
}

func (t *tensor) n() int { return max(len(t.i), len(t.f)) }

func isInt(dt graph.DataType) bool {
	switch dt {
	case graph.Int64, graph.Int32, graph.Bool:
		return true
	}
	return false
}

func isFoldFloat(dt graph.DataType) bool {
	return dt == graph.Float || dt == graph.Double || dt == graph.Float16 || dt == graph.BFloat16
}

// fromGraph decodes a constant graph tensor.
func fromGraph(g *graph.Tensor) (*tensor, error) {
	n, err := g.NumElements()
	if err != nil || n > maxElements {
		return nil, errNoFold
	}
	t := &tensor{dt: g.DType, dims: append([]int64{}, g.Dims...)}
	switch {
	case g.DType == graph.Bool:
		raw, err := g.Bytes()
		if err != nil {
			return nil, err
		}
		t.i = make([]int64, len(raw))
		for k, b := range raw {
			if b != 0 {
				t.i[k] = 1
			}
		}
	case isInt(g.DType):
		if t.i, err = g.Int64s(); err != nil {
			return nil, err
		}
	case g.DType == graph.Double:
		xs, ok := graph.ConstFloats(&graph.Value{Const: g})
		if !ok {
			return nil, errNoFold
		}
		t.f = xs
	case isFoldFloat(g.DType):
		xs, err := g.Floats()
		if err != nil {
			return nil, err
		}
		t.f = make([]float64, len(xs))
		for k, x := range xs {
			t.f[k] = float64(x)
		}
	default:
		return nil, errNoFold
	}
	if int64(t.n()) != n {
		return nil, fmt.Errorf("constant %q holds %d values for dims %v", g.Name, t.n(), g.Dims)
	}
	return t, nil
}

// toGraph encodes t as a graph tensor named name.
func (t *tensor) toGraph(name string) (*graph.Tensor, error) {
	switch {
	case t.dt == graph.Bool:
		raw := make([]byte, len(t.i))
		for k, x := range t.i {
			if x != 0 {
				raw[k] = 1
			}
		}
		return graph.NewTensor(name, t.dt, t.dims, raw), nil
	case t.dt == graph.Int64 || t.dt == graph.Int32:
		size := 8
		if t.dt == graph.Int32 {
			size = 4
		}
		raw := make([]byte, size*len(t.i))
		for k, x := range t.i {
			if size == 8 {
				le.PutUint64(raw[8*k:], uint64(x))
			} else {
				le.PutUint32(raw[4*k:], uint32(int32(x)))
			}
		}
		return graph.NewTensor(name, t.dt, t.dims, raw), nil
	case t.dt == graph.Double:
		raw := make([]byte, 8*len(t.f))
		for k, x := range t.f {
			le.PutUint64(raw[8*k:], math.Float64bits(x))
		}
		return graph.NewTensor(name, t.dt, t.dims, raw), nil
	case isFoldFloat(t.dt):
		xs := make([]float32, len(t.f))
		for k, x := range t.f {
			xs[k] = float32(x)
		}
		return graph.NewFloatTensor(name, t.dt, t.dims, xs)
	}
	return nil, errNoFold
}

// newLike makes a tensor of dt and dims with zeroed storage.
func newLike(dt graph.DataType, dims []int64) (*tensor, error) {
	n, err := graph.NumElements(dims)
	if err != nil || n > maxElements {
		return nil, errNoFold
	}
	t := &tensor{dt: dt, dims: dims}
	if isInt(dt) {
		t.i = make([]int64, n)
	} else if isFoldFloat(dt) {
		t.f = make([]float64, n)
	} else {
		return nil, errNoFold
	}
	return t, nil
}

// get and set read and write element k as float64, whatever the storage.
func (t *tensor) get(k int) float64 {
	if t.i != nil {
		return float64(t.i[k])
	}
	return t.f[k]
}

func (t *tensor) set(k int, x float64) {
	if t.i != nil {
		t.i[k] = int64(x)
	} else {
		t.f[k] = x
	}
}

// broadcast is numpy's result shape of dims, or an error.
func broadcast(shapes ...[]int64) ([]int64, error) {
	rank := 0
	for _, s := range shapes {
		rank = max(rank, len(s))
	}
	out := make([]int64, rank)
	for i := range out {
		out[i] = 1
	}
	for _, s := range shapes {
		lead := rank - len(s)
		for i, d := range s {
			switch o := out[lead+i]; {
			case d == o || d == 1:
			case o == 1:
				out[lead+i] = d
			default:
				return nil, fmt.Errorf("shapes %v do not broadcast", shapes)
			}
		}
	}
	return out, nil
}

// index maps a flat index of the broadcast shape out to the flat index of
// an operand of shape dims.
func index(k int, out, dims []int64) int {
	idx, stride := 0, 1
	lead := len(out) - len(dims)
	for ax := len(out) - 1; ax >= 0; ax-- {
		c := k % int(out[ax])
		k /= int(out[ax])
		if ax >= lead {
			d := int(dims[ax-lead])
			if d != 1 {
				idx += c * stride
			}
			stride *= d
		}
	}
	return idx
}

// elementwise applies f over broadcast operands into a tensor of dt.
func elementwise(dt graph.DataType, ins []*tensor, f func(xs []float64) float64) (*tensor, error) {
	shapes := make([][]int64, len(ins))
	for k, t := range ins {
		shapes[k] = t.dims
	}
	dims, err := broadcast(shapes...)
	if err != nil {
		return nil, err
	}
	out, err := newLike(dt, dims)
	if err != nil {
		return nil, err
	}
	xs := make([]float64, len(ins))
	for k := range out.n() {
		for j, t := range ins {
			xs[j] = t.get(index(k, dims, t.dims))
		}
		out.set(k, f(xs))
	}
	return out, nil
}

// intBinary applies f to two integer operands exactly (float64 would round
// int64 values beyond 2^53, such as INT64_MAX slice ends).
func intBinary(dt graph.DataType, a, b *tensor, f func(x, y int64) (int64, error)) (*tensor, error) {
	dims, err := broadcast(a.dims, b.dims)
	if err != nil {
		return nil, err
	}
	out, err := newLike(dt, dims)
	if err != nil {
		return nil, err
	}
	for k := range out.i {
		v, err := f(a.i[index(k, dims, a.dims)], b.i[index(k, dims, b.dims)])
		if err != nil {
			return nil, err
		}
		out.i[k] = v
	}
	return out, nil
}
