package graph

// Reading constant inputs: passes, shape inference and gradient rules all
// need the values of axes, shapes and weights that are known before
// running.

import (
	"encoding/binary"
	"fmt"
	"math"
)

// ConstTensor returns the constant data behind v: an initializer (in any
// enclosing scope) or the value attribute of a Constant node; nil when v is
// computed. Passes, shape inference and gradient rules all read constant
// inputs (axes, shapes, weights) through it.
func ConstTensor(v *Value) *Tensor {
	if v == nil {
		return nil
	}
	if v.Const != nil {
		return v.Const
	}
	if p, _ := v.Producer(); p != nil && p.Op == "Constant" && p.Domain == "" {
		if a := p.Attr("value"); a != nil && a.T != nil {
			return a.T
		}
	}
	return nil
}

// NormAxis maps a possibly negative axis into [0, rank).
func NormAxis(axis int64, rank int) (int64, error) {
	if axis < -int64(rank) || axis >= int64(rank) {
		return 0, fmt.Errorf("axis %d is out of range for rank %d", axis, rank)
	}
	if axis < 0 {
		axis += int64(rank)
	}
	return axis, nil
}

// ConstInts returns the values of a constant integer input.
func ConstInts(v *Value) ([]int64, bool) {
	t := ConstTensor(v)
	if t == nil {
		return nil, false
	}
	xs, err := t.Int64s()
	return xs, err == nil
}

// ConstFloats returns the values of a constant float or integer input.
func ConstFloats(v *Value) ([]float64, bool) {
	t := ConstTensor(v)
	if t == nil {
		return nil, false
	}
	if xs, err := t.Int64s(); err == nil {
		out := make([]float64, len(xs))
		for i, x := range xs {
			out[i] = float64(x)
		}
		return out, true
	}
	if t.DType == Double {
		raw, err := t.Bytes()
		if err != nil {
			return nil, false
		}
		out := make([]float64, len(raw)/8)
		for i := range out {
			out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
		}
		return out, true
	}
	fs, err := t.Floats()
	if err != nil {
		return nil, false
	}
	out := make([]float64, len(fs))
	for i, f := range fs {
		out[i] = float64(f)
	}
	return out, true
}

// SliceArgs are a Slice node's bounds, one entry per sliced axis: axes
// normalised into [0, rank) (0, 1, ... when the node gives none) and steps
// 1 when it gives none.
type SliceArgs struct {
	Starts, Ends, Axes, Steps []int64
}

// ReadSlice reads a Slice node's bounds from Slice-1's attributes or the
// constant inputs of later opsets, for data of the given rank. The error
// names the bound computed at run time, or says how the bounds disagree.
// Shape inference, the Slice gradient and constant folding all read them
// here.
func ReadSlice(n *Node, rank int) (SliceArgs, error) {
	var a SliceArgs
	if n.Attr("starts") != nil {
		a.Starts, a.Ends, a.Axes = n.AttrInts("starts"), n.AttrInts("ends"), n.AttrInts("axes")
	} else {
		for i, dst := range []*[]int64{&a.Starts, &a.Ends, &a.Axes, &a.Steps} {
			v := n.Input(i + 1)
			if v == nil {
				if i < 2 {
					return a, fmt.Errorf("Slice has no %s", []string{"starts", "ends"}[i])
				}
				continue
			}
			xs, ok := ConstInts(v)
			if !ok {
				return a, fmt.Errorf("%s are computed at run time", []string{"starts", "ends", "axes", "steps"}[i])
			}
			*dst = xs
		}
	}
	k := len(a.Starts)
	if len(a.Ends) != k || (a.Axes != nil && len(a.Axes) != k) || (a.Steps != nil && len(a.Steps) != k) {
		return a, fmt.Errorf("starts %v, ends %v, axes %v and steps %v differ in length", a.Starts, a.Ends, a.Axes, a.Steps)
	}
	axes := make([]int64, k)
	for i := range axes {
		ax := int64(i)
		if a.Axes != nil {
			ax = a.Axes[i]
		}
		var err error
		if axes[i], err = NormAxis(ax, rank); err != nil {
			return a, err
		}
	}
	a.Axes = axes
	if a.Steps == nil {
		a.Steps = make([]int64, k)
		for i := range a.Steps {
			a.Steps[i] = 1
		}
	}
	return a, nil
}
