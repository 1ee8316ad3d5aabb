package fold

import (
	"fmt"
	"math"

	"github.com/loracc/loracc/graph"
)

// evalFunc computes a node's outputs from constant inputs (nil for an
// omitted optional input), or errNoFold.
type evalFunc func(n *graph.Node, ins []*tensor) ([]*tensor, error)

// evalTable is the one table of ops the folder evaluates, keyed like the
// gradient table (default domain only).
func evalTable() map[string]evalFunc {
	arith := func(fi func(x, y int64) (int64, error), ff func(x, y float64) float64) evalFunc {
		return func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
			a, b := ins[0], ins[1]
			if a.dt != b.dt {
				return nil, errNoFold
			}
			if isInt(a.dt) && a.dt != graph.Bool {
				return one(intBinary(a.dt, a, b, fi))
			}
			if a.dt != graph.Float && a.dt != graph.Double {
				return nil, errNoFold // fp16/bf16 arithmetic rounds per op
			}
			return one(elementwise(a.dt, ins, func(xs []float64) float64 { return ff(xs[0], xs[1]) }))
		}
	}
	compare := func(fi func(x, y int64) bool, ff func(x, y float64) bool) evalFunc {
		return func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
			a, b := ins[0], ins[1]
			if a.dt != b.dt {
				return nil, errNoFold
			}
			if isInt(a.dt) {
				return one(intBinary(graph.Bool, a, b, func(x, y int64) (int64, error) { return b2i(fi(x, y)), nil }))
			}
			return one(elementwise(graph.Bool, ins, func(xs []float64) float64 { return float64(b2i(ff(xs[0], xs[1]))) }))
		}
	}
	logic := func(f func(x, y bool) bool) evalFunc {
		return func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
			return one(intBinary(graph.Bool, ins[0], ins[1], func(x, y int64) (int64, error) { return b2i(f(x != 0, y != 0)), nil }))
		}
	}
	return map[string]evalFunc{
		"Identity": func(n *graph.Node, ins []*tensor) ([]*tensor, error) { return []*tensor{ins[0]}, nil },
		"Add":      arith(func(x, y int64) (int64, error) { return x + y, nil }, func(x, y float64) float64 { return x + y }),
		"Sub":      arith(func(x, y int64) (int64, error) { return x - y, nil }, func(x, y float64) float64 { return x - y }),
		"Mul":      arith(func(x, y int64) (int64, error) { return x * y, nil }, func(x, y float64) float64 { return x * y }),
		"Div": arith(func(x, y int64) (int64, error) {
			if y == 0 {
				return 0, errNoFold
			}
			return x / y, nil // truncates toward zero, as ORT's integer Div
		}, func(x, y float64) float64 { return x / y }),
		"Equal":          compare(func(x, y int64) bool { return x == y }, func(x, y float64) bool { return x == y }),
		"Less":           compare(func(x, y int64) bool { return x < y }, func(x, y float64) bool { return x < y }),
		"Greater":        compare(func(x, y int64) bool { return x > y }, func(x, y float64) bool { return x > y }),
		"LessOrEqual":    compare(func(x, y int64) bool { return x <= y }, func(x, y float64) bool { return x <= y }),
		"GreaterOrEqual": compare(func(x, y int64) bool { return x >= y }, func(x, y float64) bool { return x >= y }),
		"And":            logic(func(x, y bool) bool { return x && y }),
		"Or":             logic(func(x, y bool) bool { return x || y }),
		"Xor":            logic(func(x, y bool) bool { return x != y }),
		"Not": func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
			if ins[0].dt != graph.Bool {
				return nil, errNoFold
			}
			out := &tensor{dt: graph.Bool, dims: ins[0].dims, i: make([]int64, len(ins[0].i))}
			for k, x := range ins[0].i {
				out.i[k] = 1 - x
			}
			return []*tensor{out}, nil
		},
		"Max":             minMax(func(x, y int64) bool { return x > y }),
		"Min":             minMax(func(x, y int64) bool { return x < y }),
		"Where":           evalWhere,
		"Cast":            evalCast,
		"Concat":          evalConcat,
		"Gather":          evalGather,
		"GatherND":        evalGatherND,
		"CumSum":          evalCumSum,
		"Slice":           evalSlice,
		"Unsqueeze":       evalUnsqueeze,
		"Squeeze":         evalSqueeze,
		"Reshape":         evalReshape,
		"Expand":          evalExpand,
		"ConstantOfShape": evalConstantOfShape,
		"Range":           evalRange,
		"NonZero":         evalNonZero,
		"Size": func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
			return []*tensor{{dt: graph.Int64, dims: []int64{}, i: []int64{int64(ins[0].n())}}}, nil
		},
	}
}

func one(t *tensor, err error) ([]*tensor, error) {
	if err != nil {
		return nil, err
	}
	return []*tensor{t}, nil
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// move builds a tensor of src's type and dims whose element k is src's
// element from(k), copying exactly (int64 values are never rounded).
func move(src *tensor, dims []int64, from func(k int) (int, error)) (*tensor, error) {
	out, err := newLike(src.dt, dims)
	if err != nil {
		return nil, err
	}
	for k := range out.n() {
		j, err := from(k)
		if err != nil {
			return nil, err
		}
		if out.i != nil {
			out.i[k] = src.i[j]
		} else {
			out.f[k] = src.f[j]
		}
	}
	return out, nil
}

func minMax(better func(x, y int64) bool) evalFunc {
	return func(n *graph.Node, ins []*tensor) ([]*tensor, error) {
		acc := ins[0]
		for _, b := range ins[1:] {
			if !isInt(acc.dt) || b.dt != acc.dt {
				return nil, errNoFold
			}
			var err error
			if acc, err = intBinary(acc.dt, acc, b, func(x, y int64) (int64, error) {
				if better(y, x) {
					return y, nil
				}
				return x, nil
			}); err != nil {
				return nil, err
			}
		}
		return []*tensor{acc}, nil
	}
}

func evalWhere(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	c, x, y := ins[0], ins[1], ins[2]
	if x.dt != y.dt {
		return nil, errNoFold
	}
	dims, err := broadcast(c.dims, x.dims, y.dims)
	if err != nil {
		return nil, err
	}
	// Concatenate x and y so one move picks from either.
	both := &tensor{dt: x.dt}
	if x.i != nil {
		both.i = append(append([]int64{}, x.i...), y.i...)
	} else {
		both.f = append(append([]float64{}, x.f...), y.f...)
	}
	return one(move(both, dims, func(k int) (int, error) {
		if c.i[index(k, dims, c.dims)] != 0 {
			return index(k, dims, x.dims), nil
		}
		return x.n() + index(k, dims, y.dims), nil
	}))
}

func evalCast(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	to := graph.DataType(n.AttrInt("to", 0))
	x := ins[0]
	out, err := newLike(to, x.dims)
	if err != nil {
		return nil, err
	}
	switch {
	case isInt(x.dt) && isInt(to):
		for k, v := range x.i {
			switch to {
			case graph.Bool:
				v = b2i(v != 0)
			case graph.Int32:
				v = int64(int32(v))
			}
			out.i[k] = v
		}
	case isInt(x.dt) && (to == graph.Float || to == graph.Double):
		for k, v := range x.i {
			out.f[k] = float64(v)
			if to == graph.Float {
				out.f[k] = float64(float32(v))
			}
		}
	case (x.dt == graph.Float || x.dt == graph.Double) && to == graph.Bool:
		for k, v := range x.f {
			out.i[k] = b2i(v != 0)
		}
	case x.dt == graph.Float && to == graph.Double:
		copy(out.f, x.f)
	default:
		return nil, errNoFold
	}
	return []*tensor{out}, nil
}

// axisOf normalises n's axis attribute for rank r.
func axisOf(n *graph.Node, name string, def int64, r int) (int, error) {
	a, err := graph.NormAxis(n.AttrInt(name, def), r)
	return int(a), err
}

// strides are the row-major strides of dims.
func strides(dims []int64) []int {
	s := make([]int, len(dims))
	acc := 1
	for i := len(dims) - 1; i >= 0; i-- {
		s[i] = acc
		acc *= int(dims[i])
	}
	return s
}

func evalConcat(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	r := len(ins[0].dims)
	ax, err := axisOf(n, "axis", 0, r)
	if err != nil {
		return nil, err
	}
	dims := append([]int64{}, ins[0].dims...)
	dims[ax] = 0
	all := &tensor{dt: ins[0].dt}
	var offsets []int
	for _, t := range ins {
		if t.dt != all.dt || len(t.dims) != r {
			return nil, errNoFold
		}
		offsets = append(offsets, all.n())
		all.i, all.f = append(all.i, t.i...), append(all.f, t.f...)
		dims[ax] += t.dims[ax]
	}
	if all.dt == graph.Bool || isInt(all.dt) {
		all.f = nil
	} else {
		all.i = nil
	}
	os := strides(dims)
	return one(move(all, dims, func(k int) (int, error) {
		c := (k / os[ax]) % int(dims[ax])
		for j, t := range ins {
			if c < int(t.dims[ax]) {
				ts := strides(t.dims)
				idx := 0
				for a := range r {
					ca := (k / os[a]) % int(dims[a])
					if a == ax {
						ca = c
					}
					idx += ca * ts[a]
				}
				return offsets[j] + idx, nil
			}
			c -= int(t.dims[ax])
		}
		return 0, errNoFold
	}))
}

func evalGather(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x, idx := ins[0], ins[1]
	r := len(x.dims)
	ax, err := axisOf(n, "axis", 0, r)
	if err != nil || !isInt(idx.dt) {
		return nil, errNoFold
	}
	dims := append(append(append([]int64{}, x.dims[:ax]...), idx.dims...), x.dims[ax+1:]...)
	xs, os := strides(x.dims), strides(dims)
	q := len(idx.dims)
	return one(move(x, dims, func(k int) (int, error) {
		src := 0
		for a := range ax {
			src += (k / os[a]) % int(dims[a]) * xs[a]
		}
		ik := 0
		for a := range q {
			ik = ik*int(idx.dims[a]) + (k/os[ax+a])%int(dims[ax+a])
		}
		i := idx.i[ik]
		if i < 0 {
			i += x.dims[ax]
		}
		if i < 0 || i >= x.dims[ax] {
			return 0, fmt.Errorf("gather index %d out of range [0, %d)", idx.i[ik], x.dims[ax])
		}
		src += int(i) * xs[ax]
		for a := ax + 1; a < r; a++ {
			src += (k / os[a-1+q]) % int(dims[a-1+q]) * xs[a]
		}
		return src, nil
	}))
}

// evalSlice reads the bounds from the node (graph.ReadSlice), since the
// folder only calls it when they are constants.
func evalSlice(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x := ins[0]
	r := len(x.dims)
	sa, err := graph.ReadSlice(n, r)
	if err != nil {
		return nil, errNoFold
	}
	begin := make([]int64, r)
	step := make([]int64, r)
	dims := append([]int64{}, x.dims...)
	for a := range r {
		step[a] = 1
	}
	for k, ax := range sa.Axes {
		st := sa.Steps[k]
		if st == 0 {
			return nil, errNoFold
		}
		d := x.dims[ax]
		s, e := clampSlice(sa.Starts[k], d, st), clampSlice(sa.Ends[k], d, st)
		count := int64(0)
		if st > 0 && e > s {
			count = (e - s + st - 1) / st
		} else if st < 0 && s > e {
			count = (s - e - st - 1) / -st
		}
		begin[ax], step[ax], dims[ax] = s, st, count
	}
	xs, os := strides(x.dims), strides(dims)
	return one(move(x, dims, func(k int) (int, error) {
		src := 0
		for a := range r {
			c := int64((k / os[a]) % int(max(dims[a], 1)))
			src += int(begin[a]+c*step[a]) * xs[a]
		}
		return src, nil
	}))
}

// clampSlice maps a Slice bound into range the way ONNX does: negative
// counts from the end, then clamped to [0, d] (or [-1, d-1] going back).
func clampSlice(i, d, step int64) int64 {
	if i < 0 {
		i += d
	}
	if step > 0 {
		return min(max(i, 0), d)
	}
	return min(max(i, -1), d-1)
}

// axesOf reads axes from input 1 (opset 13) or the attribute.
func axesOf(n *graph.Node, ins []*tensor) []int64 {
	if len(ins) > 1 && ins[1] != nil {
		return ins[1].i
	}
	return n.AttrInts("axes")
}

func reshaped(x *tensor, dims []int64) []*tensor {
	out := *x
	out.dims = dims
	return []*tensor{&out}
}

func evalUnsqueeze(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x := ins[0]
	axes := axesOf(n, ins)
	r := len(x.dims) + len(axes)
	at := make([]bool, r)
	for _, a := range axes {
		ax, err := graph.NormAxis(a, r)
		if err != nil || at[ax] {
			return nil, errNoFold
		}
		at[ax] = true
	}
	dims := make([]int64, 0, r)
	j := 0
	for a := range r {
		if at[a] {
			dims = append(dims, 1)
		} else {
			dims = append(dims, x.dims[j])
			j++
		}
	}
	return reshaped(x, dims), nil
}

func evalSqueeze(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x := ins[0]
	axes := axesOf(n, ins)
	drop := make([]bool, len(x.dims))
	for _, a := range axes {
		ax, err := graph.NormAxis(a, len(x.dims))
		if err != nil || x.dims[ax] != 1 {
			return nil, errNoFold
		}
		drop[ax] = true
	}
	dims := []int64{}
	for a, d := range x.dims {
		if !(drop[a] || (len(axes) == 0 && d == 1)) {
			dims = append(dims, d)
		}
	}
	return reshaped(x, dims), nil
}

func evalReshape(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x, shape := ins[0], ins[1]
	dims := append([]int64{}, shape.i...)
	known, infer := int64(1), -1
	for a, d := range dims {
		switch {
		case d == 0 && n.AttrInt("allowzero", 0) == 0:
			if a >= len(x.dims) {
				return nil, errNoFold
			}
			dims[a] = x.dims[a]
		case d == -1:
			if infer >= 0 {
				return nil, errNoFold
			}
			infer = a
			continue
		case d < 0:
			return nil, errNoFold
		}
		known *= dims[a]
	}
	if infer >= 0 {
		if known == 0 || int64(x.n())%known != 0 {
			return nil, errNoFold
		}
		dims[infer] = int64(x.n()) / known
	}
	if got, err := graph.NumElements(dims); err != nil || got != int64(x.n()) {
		return nil, errNoFold
	}
	return reshaped(x, dims), nil
}

func evalExpand(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x := ins[0]
	dims, err := broadcast(x.dims, ins[1].i)
	if err != nil {
		return nil, err
	}
	return one(move(x, dims, func(k int) (int, error) { return index(k, dims, x.dims), nil }))
}

func evalConstantOfShape(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	dt, fill := graph.Float, 0.0
	if a := n.Attr("value"); a != nil && a.T != nil {
		v, err := fromGraph(a.T)
		if err != nil || v.n() != 1 {
			return nil, errNoFold
		}
		dt, fill = v.dt, v.get(0)
		if v.i != nil && (fill > 1<<53 || fill < -(1<<53)) {
			return nil, errNoFold
		}
	}
	out, err := newLike(dt, append([]int64{}, ins[0].i...))
	if err != nil {
		return nil, err
	}
	for k := range out.n() {
		out.set(k, fill)
	}
	return []*tensor{out}, nil
}

func evalRange(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	s, l, d := ins[0], ins[1], ins[2]
	if !isInt(s.dt) || s.dt == graph.Bool || s.n() != 1 || l.n() != 1 || d.n() != 1 || d.i[0] == 0 {
		return nil, errNoFold
	}
	start, limit, delta := s.i[0], l.i[0], d.i[0]
	count := int64(math.Max(math.Ceil(float64(limit-start)/float64(delta)), 0))
	if count > maxElements {
		return nil, errNoFold
	}
	out := &tensor{dt: s.dt, dims: []int64{count}, i: make([]int64, count)}
	for k := range out.i {
		out.i[k] = start + int64(k)*delta
	}
	return []*tensor{out}, nil
}

func evalNonZero(n *graph.Node, ins []*tensor) ([]*tensor, error) {
	x := ins[0]
	r := len(x.dims)
	xs := strides(x.dims)
	var hits []int
	for k := range x.n() {
		if x.get(k) != 0 {
			hits = append(hits, k)
		}
	}
	out := &tensor{dt: graph.Int64, dims: []int64{int64(r), int64(len(hits))}, i: make([]int64, r*len(hits))}
	for j, k := range hits {
		for a := range r {
			out.i[a*len(hits)+j] = int64((k / xs[a]) % int(x.dims[a]))
		}
	}
	return []*tensor{out}, nil
}
