package infer

import (
	"fmt"

	"github.com/loracc/loracc/graph"
)

// Helpers the table's entries share: dims of constants, symbols for
// unknown dims, numpy broadcasting, and ONNX's index clamping.

func hasUnknown(dims []graph.Dim) bool {
	for _, d := range dims {
		if !d.Known() && d.Param == "" {
			return true
		}
	}
	return false
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

// dimsOf is v's dims for the dims rules: its Info's, or as many unknown
// dims (Value −1) as its rank when only that is known; nil when the rank
// is unknown too.
func (s *Inferer) dimsOf(v *graph.Value) []graph.Dim {
	in := s.Info(v)
	if in.Dims != nil {
		return in.Dims
	}
	if in.Rank < 0 {
		return nil
	}
	return unknownDims(in.Rank)
}

// unknownDims is rank dims of unknown size.
func unknownDims(rank int) []graph.Dim {
	out := make([]graph.Dim, rank)
	for i := range out {
		out[i] = graph.Dim{Value: -1}
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

// clampIndex maps a possibly negative index into [0, n] as Shape's start
// and end do.
func clampIndex(i int64, n int) int {
	if i < 0 {
		i += int64(n)
	}
	return int(min(max(i, 0), int64(n)))
}

// SliceLen is the length of x[start:end:step] for len(x) = n, with ONNX
// Slice's clamping; -1 for step 0.
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
