package fold

// CumSum and GatherND over constants: torch.onnx builds a causal
// attention mask from the attention mask's running sum (CumSum), picks
// its rows and columns with GatherND and compares them, so with these two
// the whole mask of a step of fixed shapes folds to one constant.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
)

// evalCumSum folds integer running sums only: a float32 sum accumulated
// here in float64 would round differently from ORT's float32 one.
func evalCumSum(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x, ax := ins[0], ins[1]
	if !isInt(x.dt) || x.dt == graph.Bool || ax == nil || len(ax.i) != 1 {
		return nil, errNoFold
	}
	r := len(x.dims)
	a, err := graph.NormAxis(ax.i[0], r)
	if err != nil {
		return nil, errNoFold
	}
	exclusive, reverse := n.AttrInt("exclusive", 0) != 0, n.AttrInt("reverse", 0) != 0
	out := &tensor{dt: x.dt, dims: x.dims, i: make([]int64, len(x.i))}
	st := strides(x.dims)
	size, stride := int(x.dims[a]), st[a]
	for base := range x.i {
		if (base/stride)%size != 0 {
			continue // not the first element of its line along the axis
		}
		var acc int64
		for j := range size {
			k := j
			if reverse {
				k = size - 1 - j
			}
			idx := base + k*stride
			if exclusive {
				out.i[idx] = acc
				acc += x.i[idx]
			} else {
				acc += x.i[idx]
				out.i[idx] = acc
			}
		}
	}
	return []*tensor{out}, nil
}

// evalGatherND: out[b..., i...] = data[b..., idx[b..., i..., :]...],
// with batch_dims b leading dims shared by data and indices.
func evalGatherND(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	data, idx := ins[0], ins[1]
	if !isInt(idx.dt) || len(idx.dims) == 0 {
		return nil, errNoFold
	}
	b := int(n.AttrInt("batch_dims", 0))
	q, r := len(idx.dims), len(data.dims)
	k := int(idx.dims[q-1])
	if b < 0 || b >= q || b+k > r {
		return nil, errNoFold
	}
	for i := range b {
		if data.dims[i] != idx.dims[i] {
			return nil, errNoFold
		}
	}
	dims := append(append(append([]int64{}, data.dims[:b]...), idx.dims[b:q-1]...), data.dims[b+k:]...)
	ds := strides(data.dims)
	inner := 1 // elements copied per index tuple
	for _, d := range data.dims[b+k:] {
		inner *= int(d)
	}
	perBatch := 1 // index tuples per batch entry
	for _, d := range idx.dims[b : q-1] {
		perBatch *= int(d)
	}
	return one(move(data, dims, func(o int) (int, error) {
		tuple, within := o/inner, o%inner
		batch := tuple / max(perBatch, 1)
		src := 0
		rem := batch
		for i := b - 1; i >= 0; i-- {
			src += (rem % int(data.dims[i])) * ds[i]
			rem /= int(data.dims[i])
		}
		for j := range k {
			v := idx.i[tuple*k+j]
			d := data.dims[b+j]
			if v < 0 {
				v += d
			}
			if v < 0 || v >= d {
				return 0, fmt.Errorf("gathernd index %d out of range [0, %d)", idx.i[tuple*k+j], d)
			}
			src += int(v) * ds[b+j]
		}
		return src + within, nil
	}))
}
