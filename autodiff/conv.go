package autodiff

// Gradient rules for convolutional networks — Conv, BatchNormalization in
// inference mode — and the two opset-9 gaps met beside them in Paddle's
// conv + transformer exports: Slice before opset 11 and Gemm's required C
// before opset 11. Every op these rules emit exists from opset 9 on
// (ConvTranspose, Conv, Transpose, Pad with a pads attribute, attribute
// Slice below 10, and a Range-free crop built from ConstantOfShape and
// NonZero), so old Paddle and Keras exports differentiate too.

import (
	"fmt"
	"math"
	"slices"

	"github.com/loracc/loracc/graph"
)

// convGeom is what a Conv node's attributes and static shapes say about
// its spatial axes (k of them, axes 2..k+1 of x).
type convGeom struct {
	k                  int
	kernel             []int64 // -1 where unknown
	strides, dilations []int64
	pb, pe             []int64 // padding at the start and end of each axis
	group              int64
	xs                 []int64 // x's spatial sizes, -1 where unknown
}

// convGeometry reads strides, dilations, group and the kernel size, and
// resolves auto_pad to explicit pads. SAME padding depends on x's size
// when a stride is above 1: then x's spatial sizes must be static.
func (c *gradCtx) convGeometry(n *graph.Node) (*convGeom, error) {
	xi, wi := c.Inf.Info(n.Input(0)), c.Inf.Info(n.Input(1))
	ks := n.AttrInts("kernel_shape")
	g := &convGeom{group: n.AttrInt("group", 1)}
	switch {
	case ks != nil:
		g.k = len(ks)
	case wi.Rank >= 3:
		g.k = wi.Rank - 2
	case xi.Rank >= 3:
		g.k = xi.Rank - 2
	default:
		return nil, fmt.Errorf("the number of spatial axes is not known statically (no kernel_shape, and the ranks of %q and %q are unknown)", n.Input(0).Name, n.Input(1).Name)
	}
	// A copy: the backward Conv takes these as its own attributes, which
	// must not share memory with the forward node's.
	ones := func(name string) ([]int64, error) {
		xs := slices.Clone(n.AttrInts(name))
		if xs == nil {
			xs = make([]int64, g.k)
			for i := range xs {
				xs[i] = 1
			}
		}
		if len(xs) != g.k {
			return nil, fmt.Errorf("%s %v has %d entries for %d spatial axes", name, xs, len(xs), g.k)
		}
		return xs, nil
	}
	var err error
	if g.strides, err = ones("strides"); err != nil {
		return nil, err
	}
	if g.dilations, err = ones("dilations"); err != nil {
		return nil, err
	}
	g.kernel = make([]int64, g.k)
	g.xs = make([]int64, g.k)
	for i := range g.k {
		g.kernel[i], g.xs[i] = -1, -1
		switch {
		case ks != nil:
			g.kernel[i] = ks[i]
		case wi.Dims != nil && len(wi.Dims) == g.k+2 && wi.Dims[2+i].Known():
			g.kernel[i] = wi.Dims[2+i].Value
		}
		if xi.Dims != nil && len(xi.Dims) == g.k+2 && xi.Dims[2+i].Known() {
			g.xs[i] = xi.Dims[2+i].Value
		}
	}
	g.pb, g.pe = make([]int64, g.k), make([]int64, g.k)
	autoPad := "NOTSET"
	if a := n.Attr("auto_pad"); a != nil && len(a.S) > 0 {
		autoPad = string(a.S)
	}
	switch autoPad {
	case "NOTSET":
		if pads := n.AttrInts("pads"); pads != nil {
			if len(pads) != 2*g.k {
				return nil, fmt.Errorf("pads %v has %d entries for %d spatial axes", pads, len(pads), g.k)
			}
			copy(g.pb, pads[:g.k])
			copy(g.pe, pads[g.k:])
		}
	case "VALID":
	case "SAME_UPPER", "SAME_LOWER":
		for i := range g.k {
			s, d, kk, x := g.strides[i], g.dilations[i], g.kernel[i], g.xs[i]
			if kk < 0 {
				return nil, fmt.Errorf("auto_pad %s needs the kernel size statically", autoPad)
			}
			var total int64
			switch {
			case x >= 0:
				out := (x + s - 1) / s
				total = max(0, (out-1)*s+(kk-1)*d+1-x)
			case s == 1:
				total = (kk - 1) * d
			default:
				return nil, fmt.Errorf("auto_pad %s with stride %d pads by an amount that depends on %q's size, which is not known statically", autoPad, s, n.Input(0).Name)
			}
			small := total / 2
			if autoPad == "SAME_UPPER" {
				g.pb[i], g.pe[i] = small, total-small
			} else {
				g.pb[i], g.pe[i] = total-small, small
			}
		}
	default:
		return nil, fmt.Errorf("auto_pad %q is not supported", autoPad)
	}
	return g, nil
}

// spatialAxes is [2, ..., k+1].
func (g *convGeom) spatialAxes() []int64 { return iota64(2, int64(g.k)+2) }

// y = Conv(x, W, B):
//
//	dx = ConvTranspose(gy, W) with the same strides, dilations, group and
//	     pads. A stride s > 1 drops the last r = (x + pads − d(k−1) − 1) mod s
//	     positions of x; output_padding = r restores them when x's size is
//	     static, else the transposed conv is made s−1 longer and cropped
//	     to x's size at run time.
//	dW = Conv(xᵀ, gyᵀ) with batch and channels swapped (per group), strides
//	     and dilations swapped, cropped to the kernel size.
//	dB = Σ gy over batch and spatial axes.
func gradConv(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	geo, err := c.convGeometry(n)
	if err != nil {
		return c.failf("%w", err)
	}
	gy := gys[0]
	out := make([]*graph.Value, n.NumInputs())
	if c.needs(0) {
		out[0] = c.convGradX(n, gy, geo)
	}
	if c.needs(1) {
		out[1] = c.convGradW(n, gy, geo)
	}
	if b := n.Input(2); b != nil && c.needs(2) {
		out[2] = c.ReduceSum(gy, append([]int64{0}, geo.spatialAxes()...), false)
	}
	return out
}

func (c *gradCtx) convGradX(n *graph.Node, gy *graph.Value, geo *convGeom) *graph.Value {
	x, w := n.Input(0), n.Input(1)
	pads := make([]int64, 2*geo.k)
	outPad := make([]int64, geo.k)
	var crop []int64 // axes cut to x's size at run time
	anyPad := false
	for i := range geo.k {
		s, d, kk, xs := geo.strides[i], geo.dilations[i], geo.kernel[i], geo.xs[i]
		pads[i] = geo.pb[i]
		switch {
		case s == 1:
			pads[geo.k+i] = geo.pe[i]
		case xs >= 0 && kk >= 0:
			pads[geo.k+i] = geo.pe[i]
			outPad[i] = (xs + geo.pb[i] + geo.pe[i] - d*(kk-1) - 1) % s
		default:
			// No end padding and s−1 extra positions: at least x's size
			// (x + pb = s(out−1) + d(k−1) + 1 + r − pe ≤ that + s − 1).
			outPad[i] = s - 1
			crop = append(crop, int64(2+i))
		}
		anyPad = anyPad || outPad[i] != 0
	}
	attrs := []*graph.Attr{
		graph.AttrIs("strides", geo.strides...), graph.AttrIs("dilations", geo.dilations...),
		graph.AttrI("group", geo.group), graph.AttrIs("pads", pads...),
	}
	if anyPad {
		attrs = append(attrs, graph.AttrIs("output_padding", outPad...))
	}
	gx := c.Op("ConvTranspose", vals(gy, w), attrs...)
	if len(crop) == 0 {
		return gx
	}
	if c.Opset >= 10 {
		ends := c.Gather(c.Shape(x), c.Ints(crop...), 0)
		return c.SliceT(gx, c.Ints(make([]int64, len(crop))...), ends, c.Ints(crop...))
	}
	// Opset 9 has neither Range nor run-time Slice bounds: gather the
	// positions 0..size−1, found as NonZero of size ones.
	one := graph.NewTensor("", graph.Bool, []int64{1}, []byte{1})
	for _, a := range crop {
		ones := c.Op("ConstantOfShape", vals(c.DimOf(x, a)), graph.AttrT("value", one))
		gx = c.Gather(gx, c.Reshape(c.NonZero(ones), c.Ints(-1)), a)
	}
	return gx
}

// convGradW correlates x with gy: dW[m, c, j] = Σ_{n,o} gy[n, m, o]·
// xpad[n, c', o·s + j·d] is a Conv whose batch is x's channels, whose
// input channels are x's batch and whose kernel is gy — stride d,
// dilation s, the forward pads. With groups, x's channels are split so
// that each group's batch copies sit in that group's input channels:
// [N, g·Cg, ...] → [Cg, g·N, ...], and gy's channels already run group by
// group.
func (c *gradCtx) convGradW(n *graph.Node, gy *graph.Value, geo *convGeom) *graph.Value {
	x, w := n.Input(0), n.Input(1)
	r := geo.k + 2
	swap := iota64(0, int64(r)) // [1, 0, 2, 3, ...]
	swap[0], swap[1] = 1, 0
	var xt *graph.Value
	if geo.group == 1 {
		xt = c.Transpose(x, swap...)
	} else {
		cg, ok := c.staticDim(w, 1)
		if !ok {
			c.Fail(fmt.Errorf("the weight gradient of a grouped Conv needs %q's channels per group (dim 1) statically", w.Name))
			return nil
		}
		moved := c.Transpose(c.Reshape(x, c.Ints(0, geo.group, cg, -1)), 2, 1, 0, 3)
		spatial := c.Slice(c.Shape(x), 2, int64(r), 0)
		xt = c.Reshape(moved, c.Concat(0, c.Ints(cg, -1), spatial))
	}
	kern := c.Transpose(gy, swap...)
	pads := append(append([]int64{}, geo.pb...), geo.pe...)
	dw := c.Op("Conv", vals(xt, kern),
		graph.AttrIs("strides", geo.dilations...), graph.AttrIs("dilations", geo.strides...),
		graph.AttrI("group", geo.group), graph.AttrIs("pads", pads...))
	// With stride s the correlation runs ⌊r/d⌋ positions past the kernel
	// (r as in convGradX): keep the first k.
	for i := range geo.k {
		if geo.strides[i] == 1 {
			continue
		}
		if geo.kernel[i] < 0 {
			c.Fail(fmt.Errorf("the weight gradient of a strided Conv needs the kernel size statically (kernel_shape or %q's shape)", w.Name))
			return nil
		}
		dw = c.Slice(dw, 0, geo.kernel[i], int64(2+i))
	}
	return c.Transpose(dw, swap...)
}

// BatchNormalization in inference mode normalizes over channel axis 1
// with the stored statistics: y = s·(x − μ)·ρ + B, ρ = 1/√(σ² + ε), every
// parameter of shape [C] broadcast as [C, 1, ..., 1].
//
//	dx = gy·s·ρ
//	dB = Σ gy,   ds = Σ gy·(x − μ)·ρ,   dμ = −s·ρ·Σ gy,
//	dσ² = −½·s·ρ³·Σ gy·(x − μ)          (Σ over all axes but 1)
//
// Training mode (training_mode=1, or the running-statistics outputs
// before opset 14) updates the statistics from the batch and is refused,
// as is spatial=0 (opsets 7–8: statistics per activation).
func gradBatchNorm(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	if n.AttrInt("training_mode", 0) != 0 {
		return c.failf("training_mode=1 is not supported (the statistics would come from the batch)")
	}
	for i, o := range n.Outputs() {
		if i > 0 && o != nil && o.Name != "" {
			return c.failf("output %d (%q) is a training-mode statistic; only inference mode is supported", i, o.Name)
		}
	}
	if n.AttrInt("spatial", 1) == 0 {
		return c.failf("spatial=0 (per-activation statistics) is not supported")
	}
	x, scale, mean, variance := n.Input(0), n.Input(1), n.Input(3), n.Input(4)
	r := c.rank(x)
	if r < 0 {
		return nil
	}
	if r < 2 {
		return c.failf("%q has rank %d; BatchNormalization needs [N, C, ...]", x.Name, r)
	}
	axes := append([]int64{0}, iota64(2, int64(r))...)
	// perChannel broadcasts a [C] tensor against x.
	perChannel := func(v *graph.Value) *graph.Value {
		if r == 2 {
			return v
		}
		return c.Unsqueeze(v, iota64(1, int64(r-1))...)
	}
	eps := c.K(float64(n.AttrFloat("epsilon", 1e-5)), x)
	gy := gys[0]
	rho := c.Reciprocal(c.Sqrt(c.Add(variance, eps)))
	out := make([]*graph.Value, n.NumInputs())
	var sumGy, xc *graph.Value
	if c.needs(2) || c.needs(3) {
		sumGy = c.ReduceSum(gy, axes, false)
	}
	if c.needs(1) || c.needs(4) {
		xc = c.Sub(x, perChannel(mean))
	}
	var sRho *graph.Value
	if c.needs(0) || c.needs(3) || c.needs(4) {
		sRho = c.Mul(scale, rho)
	}
	if c.needs(0) {
		out[0] = c.Mul(gy, perChannel(sRho))
	}
	if c.needs(2) {
		out[2] = sumGy
	}
	var sumGyXc *graph.Value
	if c.needs(1) || c.needs(4) {
		sumGyXc = c.ReduceSum(c.Mul(gy, xc), axes, false)
	}
	if c.needs(1) {
		out[1] = c.Mul(sumGyXc, rho)
	}
	if c.needs(3) {
		out[3] = c.Neg(c.Mul(sumGy, sRho))
	}
	if c.needs(4) {
		half := c.K(-0.5, x)
		rho2 := c.Mul(rho, rho)
		out[4] = c.Mul(c.Mul(sumGyXc, c.Mul(sRho, rho2)), half)
	}
	return out
}

// gradSliceOpset picks the cheaper Slice rule that applies: when the
// bounds are constants, the steps 1 and the sliced sizes known (or the
// slice runs to the end), the gradient is the output gradient padded with
// zeros (slicePads); otherwise, from opset 11, gradSlice scatters it into
// zeros at run-time positions. Before 11 (no Range, no ScatterElements)
// only the padding works. Both give the same values; Pad is one cheap
// copy where ScatterElements is a slow kernel on a zeros tensor it first
// materialises (the lm loss's logits[:, :-1] on a static graph). Paddle's
// opset-9 exports slice q, k and v out of one projection this way,
// between a conv backbone and its transformer neck, which is why the rule
// sits with the conv rules.
func gradSliceOpset(c *gradCtx, n *graph.Node, gys []*graph.Value) []*graph.Value {
	pads, err := c.slicePads(n)
	if err != nil && c.Opset >= 11 {
		return gradSlice(c, n, gys)
	}
	if err != nil {
		return c.failf("%w (before opset 11 the gradient of a Slice needs constant bounds, step 1 and known sizes)", err)
	}
	out := make([]*graph.Value, n.NumInputs())
	out[0] = c.Pad(gys[0], pads)
	return out
}

// slicePads: for step 1, x[s:e] along an axis of size d is undone by
// padding the gradient with s zeros before and d − e after (after ONNX's
// clamping). The bounds are Slice-1's attributes or the constant inputs
// of later Slices; the pads need x's size along each sliced axis unless
// the slice runs from a non-negative start to the end.
func (c *gradCtx) slicePads(n *graph.Node) ([]int64, error) {
	x := n.Input(0)
	r := c.Inf.Rank(x)
	if r < 0 {
		return nil, fmt.Errorf("the rank of %q is not known statically", x.Name)
	}
	sa, err := graph.ReadSlice(n, r)
	if err != nil {
		return nil, err
	}
	for _, st := range sa.Steps {
		if st != 1 {
			return nil, fmt.Errorf("step %d", st)
		}
	}
	starts, ends := sa.Starts, sa.Ends
	pads := make([]int64, 2*r)
	for k := range starts {
		a := sa.Axes[k]
		size, known := c.staticDim(x, a)
		switch {
		case known:
			clamp := func(i int64) int64 {
				if i < 0 {
					i += size
				}
				return min(max(i, 0), size)
			}
			s, e := clamp(starts[k]), clamp(ends[k])
			e = max(e, s)
			pads[a], pads[int64(r)+a] = s, size-e
		case starts[k] >= 0 && ends[k] >= math.MaxInt32:
			pads[a] = starts[k]
		default:
			return nil, fmt.Errorf("%q's size along axis %d is not known statically, and the padding that undoes slice [%d:%d] needs it", x.Name, a, starts[k], ends[k])
		}
	}
	return pads, nil
}
