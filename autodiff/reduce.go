package autodiff

// Gradient rules for reductions: the gradient of a reduced value is put
// back on the reduced axes and broadcast to the input's shape.

import (
	"fmt"
	"slices"

	"github.com/loracc/loracc/graph"
)

// reduceAxes returns a Reduce node's axes (attribute, or constant input
// from opset 13/18), normalized to be non-negative, and whether it reduces
// every axis. The axes are a copy: the attribute belongs to the forward
// graph, which differentiation must leave as it is.
func (c *gradCtx) reduceAxes(n *graph.Node) (axes []int64, all bool, err error) {
	attr, ok := c.Inf.Axes(n)
	if !ok {
		return nil, false, fmt.Errorf("axes are computed at run time; only constant axes are supported")
	}
	if len(attr) == 0 {
		if n.AttrInt("noop_with_empty_axes", 0) != 0 {
			return nil, false, nil
		}
		return nil, true, nil
	}
	r := c.Inf.Rank(n.Input(0))
	axes = slices.Clone(attr)
	for i, a := range axes {
		if a < 0 {
			if r < 0 {
				return nil, false, fmt.Errorf("negative axis %d on %q of unknown rank", a, n.Input(0).Name)
			}
			axes[i] = a + int64(r)
		}
	}
	return axes, false, nil
}

// expandBack turns the gradient of a reduction's output into one shaped
// like its input: put back the reduced axes (when keepdims=0), then
// broadcast.
func (c *gradCtx) expandBack(n *graph.Node, gy *graph.Value) *graph.Value {
	axes, all, err := c.reduceAxes(n)
	if err != nil {
		c.Fail(err)
		return nil
	}
	if axes == nil && !all {
		return gy // noop_with_empty_axes: identity
	}
	if n.AttrInt("keepdims", 1) == 0 && !all {
		slices.Sort(axes) // reduceAxes's own copy
		gy = c.Unsqueeze(gy, axes...)
	}
	return c.Expand(gy, c.Shape(n.Input(0)))
}

func gradReduceSum(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.expandBack(n, gys[0])
	return out
}

// ReduceMean: ReduceSum's gradient divided by the number of elements each
// output averages, size(x) / size(y), computed at run time.
func gradReduceMean(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	gx := c.expandBack(n, gys[0])
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.Mul(gx, c.countRatio(n.Output(0), n.Input(0)))
	return out
}

// countRatio is size(small) / size(big) in big's float type (float32 when
// unknown): 1/N for the N elements a reduction averages.
func (c *gradCtx) countRatio(small, big *graph.Value) *graph.Value {
	dt := c.Inf.DType(big)
	if dt == graph.Undefined {
		dt = graph.Float
	}
	return c.Div(c.Cast(c.Size(small), dt), c.Cast(c.Size(big), dt))
}
