package autodiff

// Un-broadcasting, which the driver applies to the gradients of the
// broadcasting slots of a rule (Add, Mul, Where, Max, Gemm's C, ...): the
// rule returns the gradient shaped like the output, and unbroadcast sums
// it down to the input's shape — statically when the shapes say which
// axes were broadcast, with run-time shape arithmetic otherwise. Doing
// it in one place means a rule whose gradient is already input-shaped
// never pays for a run-time un-broadcast.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
)

// sameShape reports whether a and b are statically known to have the same
// shape (equal sizes or identical symbols in every dim).
func (c *gradCtx) sameShape(a, b *graph.Value) bool {
	x, y := c.Inf.Info(a), c.Inf.Info(b)
	if x.Dims == nil || y.Dims == nil || len(x.Dims) != len(y.Dims) {
		return false
	}
	for i := range x.Dims {
		dx, dy := x.Dims[i], y.Dims[i]
		switch {
		case dx.Param != "" && dx.Param == dy.Param:
		case dx.Known() && dy.Known() && dx.Value == dy.Value:
		default:
			return false
		}
	}
	return true
}

// unbroadcast sums g (shaped like the broadcast result) down to the shape
// of x, the way numpy broadcasting expanded x. When shapes are known it
// reduces over the right axes statically; otherwise it finds them at run
// time with standard ops: pad x's shape with leading ones, take the axes
// where it is 1, ReduceSum there, Reshape to x's shape.
func (c *gradCtx) unbroadcast(g, x *graph.Value) *graph.Value {
	if c.sameShape(g, x) {
		return g
	}
	xi, gi := c.Inf.Info(x), c.Inf.Info(g)
	if xi.Rank == 0 && gi.Rank >= 0 {
		return c.ReshapeLike(c.ReduceSum(g, nil, false), x)
	}
	if axes, static := c.broadcastAxes(xi.Dims, gi.Rank, gi.Dims); static {
		if len(axes) == 0 {
			return g
		}
		return c.ReshapeLike(c.ReduceSum(g, axes, true), x)
	}
	if c.Opset < 13 {
		return c.unbroadcastPerAxis(g, x, xi.Rank, gi.Rank)
	}
	gs, xs := c.Shape(g), c.Shape(x)
	pad := c.Sub(c.ShapeOf(gs), c.ShapeOf(xs))
	ones := c.Op("ConstantOfShape", vals(pad), graph.AttrT("value", graph.NewTensor("", graph.Int64, []int64{1}, []byte{1, 0, 0, 0, 0, 0, 0, 0})))
	padded := c.Concat(0, ones, xs)
	mask := c.And(c.Equal(padded, c.Ints(1)), c.Not(c.Equal(gs, c.Ints(1))))
	axes := c.Reshape(c.NonZero(mask), c.Ints(-1))
	return c.ReshapeLike(c.ReduceSumDyn(g, axes), x)
}

// broadcastAxes is the axes of a rank-rg gradient (dims gd, nil when
// unknown) that x's dims xd were broadcast along, when the static shapes
// tell: leading axes x lacks, and axes where x has 1 and g may not.
func (c *gradCtx) broadcastAxes(xd []graph.Dim, rg int, gd []graph.Dim) (axes []int64, static bool) {
	if xd == nil || rg < len(xd) {
		return nil, false
	}
	lead := rg - len(xd)
	for i := 0; i < rg; i++ {
		if i < lead {
			axes = append(axes, int64(i))
			continue
		}
		dx := xd[i-lead]
		dg := graph.Dim{Value: -1}
		if gd != nil {
			dg = gd[i]
		}
		switch {
		case dx.Known() && dx.Value == 1:
			if !(dg.Known() && dg.Value == 1) {
				axes = append(axes, int64(i))
			}
		case dx.Known(), dx.Param != "" && dx.Param == dg.Param:
			// same size
		default:
			return nil, false
		}
	}
	return axes, true
}

// unbroadcastPerAxis is unbroadcast for opsets without run-time reduction
// axes (before 13), given both ranks: leading axes are summed statically;
// for each other axis a run-time Where picks the axis sum when x's dim is 1
// and g's is not, and a Slice to x's dim keeps one copy of it.
func (c *gradCtx) unbroadcastPerAxis(g, x *graph.Value, rx, rg int) *graph.Value {
	if rx < 0 || rg < 0 || rx > rg || c.Opset < 10 {
		c.Fail(fmt.Errorf("cannot tell statically how %q broadcast against %q at opset %d (declare the shapes or use opset ≥ 13)", x.Name, g.Name, c.Opset))
		return nil
	}
	if lead := rg - rx; lead > 0 {
		g = c.ReduceSum(g, iota64(0, int64(lead)), false)
	}
	xs := c.Shape(x)
	for i := int64(0); i < int64(rx); i++ {
		gs := c.ShapeOf(g)
		dim := func(s *graph.Value) *graph.Value { return c.SliceT(s, c.Ints(i), c.Ints(i+1), c.Ints(0)) }
		xd := dim(xs)
		cond := c.And(c.Equal(xd, c.Ints(1)), c.Not(c.Equal(dim(gs), c.Ints(1))))
		summed := c.ReduceSum(g, []int64{i}, true)
		picked := c.Where(c.Reshape(cond, c.Ints()), summed, g)
		g = c.SliceT(picked, c.Ints(0), xd, c.Ints(i))
	}
	return c.ReshapeLike(g, x)
}
