package gradcheck

import (
	"math"
	"testing"

	"github.com/loracc/loracc/graph"
)

// convCases cover the rules of rewrite/grad_conv.go: Conv (every input,
// strides with and without static sizes, dilations, groups, auto_pad,
// 1-D and 2-D), BatchNormalization in inference mode, and Slice before
// opset 11.
//
// ORT's CPU Conv and ConvTranspose have float32 kernels only, so the Conv
// cases run in float32; Conv is bilinear in x and W, so the central
// difference is exact up to rounding and 2e-3 relative holds with room.
func convCases() []Case {
	f32 := graph.Float
	ks := func(k ...int64) *graph.Attr { return graph.AttrIs("kernel_shape", k...) }
	st := func(s ...int64) *graph.Attr { return graph.AttrIs("strides", s...) }
	pads := func(p ...int64) *graph.Attr { return graph.AttrIs("pads", p...) }
	return []Case{
		// The PP-OCRv4 neck: 1×3 kernel, width padded to keep its size.
		{Name: "Conv 1x3 same width, opset 9", Opset: 9, DType: f32, Inputs: []Input{p("x", 2, 3, 2, 5), p("w", 4, 3, 1, 3), p("b", 4)},
			Build: op("Conv", []string{"x", "w", "b"}, ks(1, 3), pads(0, 1, 0, 1))},
		{Name: "Conv 1x1 no bias, opset 9", Opset: 9, DType: f32, Inputs: []Input{p("x", 2, 3, 1, 4), p("w", 5, 3, 1, 1)},
			Build: op("Conv", []string{"x", "w"})},
		// H: 7+1+0−5 = 3 → out 2, one row dropped (output_padding 1);
		// W: 8+0+2−2 = 8 → out 5, none dropped.
		{Name: "Conv stride 2 dilation 2 asymmetric pads, static", DType: f32, Inputs: []Input{p("x", 1, 2, 7, 8), p("w", 3, 2, 3, 2), p("b", 3)},
			Build: op("Conv", []string{"x", "w", "b"}, st(2, 2), graph.AttrIs("dilations", 2, 1), pads(1, 0, 0, 2))},
		// Sizes unknown: the transposed conv is cropped with a run-time Slice.
		{Name: "Conv stride 2 symbolic, opset 13", Opset: 13, DType: f32, Symbolic: true, Inputs: []Input{p("x", 2, 2, 7, 6), p("w", 3, 2, 3, 3), p("b", 3)},
			Build: op("Conv", []string{"x", "w", "b"}, ks(3, 3), st(2, 2), pads(1, 1, 0, 0))},
		// Opset 9 crops with Gather of NonZero(ConstantOfShape): 11+1−2 = 10
		// → out 4, one position dropped.
		{Name: "Conv 1-D stride 3 symbolic, opset 9", Opset: 9, DType: f32, Symbolic: true, Inputs: []Input{p("x", 2, 2, 11), p("w", 3, 2, 2)},
			Build: op("Conv", []string{"x", "w"}, ks(2), st(3), pads(1, 0))},
		{Name: "Conv 1-D grouped SAME_UPPER stride 2", DType: f32, Inputs: []Input{p("x", 2, 4, 9), p("w", 6, 2, 3), p("b", 6)},
			Build: op("Conv", []string{"x", "w", "b"}, graph.AttrI("group", 2), st(2), graph.AttrS("auto_pad", "SAME_UPPER"))},
		{Name: "Conv depthwise SAME_LOWER, opset 9", Opset: 9, DType: f32, Inputs: []Input{p("x", 1, 3, 5, 4), p("w", 3, 1, 2, 2)},
			Build: op("Conv", []string{"x", "w"}, graph.AttrI("group", 3), graph.AttrS("auto_pad", "SAME_LOWER"))},
		{Name: "Conv depthwise SAME_UPPER stride 1 symbolic, opset 11", Opset: 11, DType: f32, Symbolic: true, Inputs: []Input{p("x", 1, 3, 5, 4), x("w", 3, 1, 3, 2)},
			Build: op("Conv", []string{"x", "w"}, graph.AttrI("group", 3), ks(3, 2), graph.AttrS("auto_pad", "SAME_UPPER"))},
		// The weight gradient alone (a Conv one may adapt later): with
		// stride 2 the correlation overruns the kernel and is cropped.
		{Name: "Conv VALID stride 2, weight only", DType: f32, Inputs: []Input{x("x", 2, 2, 6, 5), p("w", 2, 2, 3, 3)},
			Build: op("Conv", []string{"x", "w"}, st(2, 2), graph.AttrS("auto_pad", "VALID"))},
		{Name: "Conv grouped stride 2 dilation 2, weight and bias only", DType: f32, Inputs: []Input{x("x", 2, 4, 9, 3), p("w", 4, 2, 2, 1), p("b", 4)},
			Build: op("Conv", []string{"x", "w", "b"}, graph.AttrI("group", 2), st(2, 1), graph.AttrIs("dilations", 2, 1), pads(1, 0, 1, 0))},

		// BatchNormalization (inference): statistics are constants in
		// exported models; here every input may be a parameter.
		{Name: "BatchNormalization opset 9, x only", Opset: 9, Inputs: []Input{p("x", 2, 3, 4, 2), x("s", 3), x("b", 3), x("m", 3), {Name: "v", Shape: []int64{3}, Positive: true}},
			Build: op("BatchNormalization", []string{"x", "s", "b", "m", "v"}, graph.AttrF("epsilon", 1e-3))},
		{Name: "BatchNormalization opset 15 1-D, every input", Opset: 15, Inputs: []Input{p("x", 2, 3, 4), p("s", 3), p("b", 3), p("m", 3), pos("v", 3)},
			Build: op("BatchNormalization", []string{"x", "s", "b", "m", "v"})},
		{Name: "BatchNormalization rank 2 symbolic, statistics only", Opset: 14, Symbolic: true, Inputs: []Input{x("x", 4, 3), x("s", 3), x("b", 3), p("m", 3), pos("v", 3)},
			Build: op("BatchNormalization", []string{"x", "s", "b", "m", "v"}, graph.AttrF("epsilon", 0.1))},

		// Slice before opset 11: Pad with compile-time pads (float64: ORT
		// has double Slice-1/10 and Pad-2).
		{Name: "Slice opset 9 attributes (Paddle q, k, v)", Opset: 9, Inputs: []Input{p("a", 3, 2, 4)},
			Build: op("Slice", []string{"a"}, graph.AttrIs("starts", 1), graph.AttrIs("ends", 2), graph.AttrIs("axes", 0))},
		{Name: "Slice opset 9 negative start, clamped end, two axes", Opset: 9, Inputs: []Input{p("a", 4, 5)},
			Build: op("Slice", []string{"a"}, graph.AttrIs("starts", -3, 1), graph.AttrIs("ends", math.MaxInt64, -1))},
		{Name: "Slice opset 9 symbolic, to the end", Opset: 9, Symbolic: true, Inputs: []Input{p("a", 3, 6)},
			Build: op("Slice", []string{"a"}, graph.AttrIs("starts", 2), graph.AttrIs("ends", math.MaxInt32), graph.AttrIs("axes", 1))},
		{Name: "Slice opset 10 constant inputs", Opset: 10, Inputs: []Input{p("a", 4, 5)},
			Build: withInts("Slice", "a", ints(i64(1), i64(3), i64(-1), i64(1)))},
	}
}

// TestGradientRulesConv checks the conv cases: float64 to 1e-6, float32
// to 2e-3 relative.
func TestGradientRulesConv(t *testing.T) {
	runCases(t, convCases())
}
