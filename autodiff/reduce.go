package autodiff

// Gradient rules for reductions.

import (
	"fmt"

	"github.com/loracc/loracc/graph"
)

// reduceAxes returns a Reduce node's axes (attribute, or constant input
// from opset 13/18), normalized to be non-negative, and whether it reduces
// every axis.
func (c *gradCtx) reduceAxes(n *graph.Node) (axes []int64, all bool, err error) {
	axes, ok := c.Inf.Axes(n)
	if !ok {
		return nil, false, fmt.Errorf("axes are computed at run time; only constant axes are supported")
	}
	if len(axes) == 0 {
		if n.AttrInt("noop_with_empty_axes", 0) != 0 {
			return nil, false, nil
		}
		return nil, true, nil
	}
	r := c.Inf.Rank(n.Input(0))
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
func (c *gradCtx) expandBack(n *graph.Node, gy *graph.Value) (*graph.Value, error) {
	x := n.Input(0)
	axes, all, err := c.reduceAxes(n)
	if err != nil {
		return nil, err
	}
	if axes == nil && !all {
		return gy, nil // noop_with_empty_axes: identity
	}
	if n.AttrInt("keepdims", 1) == 0 && !all {
		gy = c.Unsqueeze(gy, sortedAxes(axes)...)
	}
	return c.Op("Expand", vals(gy, c.Shape(x))), nil
}

func sortedAxes(axes []int64) []int64 {
	out := append([]int64(nil), axes...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func gradReduceSum(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gx, err := c.expandBack(n, gys[0])
	if err != nil {
		return nil, err
	}
	return vals(gx), nil
}

// ReduceMean: ReduceSum's gradient divided by the number of elements each
// output averages, size(x) / size(y), computed at run time.
func gradReduceMean(c *gradCtx, n *graph.Node, gys []*graph.Value) ([]*graph.Value, error) {
	gx, err := c.expandBack(n, gys[0])
	if err != nil {
		return nil, err
	}
	x, y := n.Input(0), n.Output(0)
	dt := int64(c.Inf.DType(x))
	if dt == 0 {
		dt = int64(graph.Float)
	}
	ratio := c.Op("Div", vals(
		c.Op("Cast", vals(c.Op("Size", vals(y))), graph.AttrI("to", dt)),
		c.Op("Cast", vals(c.Op("Size", vals(x))), graph.AttrI("to", dt))))
	return vals(c.Op("Mul", vals(gx, ratio))), nil
}
